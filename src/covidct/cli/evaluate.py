"""`covidct evaluate`: a trained model on a labelled split, with patient-bootstrap CIs."""
from __future__ import annotations

import argparse

from ..constants import METHODS
from ..covidx import LAYOUT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy, per-class Sn/Sp/PPV/NPV, AUC with 95%% CIs on a labelled split",
        description="Score a trained model on one split of a labelled dataset and report accuracy and, "
                    "per class, sensitivity, specificity, PPV, NPV, F1 and ROC AUC, with 95% confidence "
                    "intervals from bootstrap resampling of patients. The slice classifier reports "
                    "slice-level and patient-level results side by side. Writes results.json, "
                    "results.csv and scores.npz into --out; on a covidct synth cohort (true lungs "
                    "in labels.csv) also lungs.json: the lung mask's Dice and lesion coverage and "
                    "the involvement figures against the true lesion share, and, for the slice "
                    "classifier, a third level: each patient's whole DICOM series called as "
                    "`covidct predict` calls it (its own slice choice and series rule).")
    p.add_argument("data", help=f"bit: a COVIDx-layout folder ({LAYOUT}) or a "
                                "split file; covidctnet: a folder per class or a labels CSV")
    p.add_argument("--model", default=None, help="model file (default: <method>.pt in "
                                                  "$COVIDCT_MODELS or demo-output/models)")
    p.add_argument("--method", choices=METHODS, default="bit", help="method when --model is not given")
    p.add_argument("--split", default="test", help="which split to score (default: test)")
    p.add_argument("--out", default=None, help="folder for results.json/.csv and scores.npz")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of patients (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--patient-rule", choices=("mean", "topk", "vote"), default="mean",
                   help="how slice probabilities become a patient's (slice classifier only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..evaluation import evaluate
    from ..explain.localisation import localisation_lines
    from ..metrics import format_table2, format_table3
    from ..models import load_models

    model = load_models([args.method], [args.model] if args.model else [])[0]
    result = evaluate(model, args.data, split=args.split, out_dir=args.out, n_boot=args.n_boot,
                      seed=args.seed, rule=args.patient_rule)
    if result["provenance"]["synthetic"]:
        print("SYNTHETIC DATA: these figures describe computer-generated phantoms, not patients.")
    print(format_table2(result["metrics"]))
    if result["scores"].level == "scan":
        print(format_table3(result["metrics"]))
    for line in localisation_lines(result.get("localisation")):
        print(line)
    if result.get("lungs"):
        # lazy: keeps scipy, numpy off the `covidct --help` path
        from ..lungs_eval import summary_lines

        print("\n".join(summary_lines(result["lungs"])))
    if args.out:
        print(f"results written to {args.out}")
    return 0
