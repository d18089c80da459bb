"""`covidct synth`: write a SYNTHETIC labelled chest-CT cohort (phantoms, not patients)."""
from __future__ import annotations

import argparse

from ..constants import SYNTHETIC_NOTICE
from ..synth.settings import CohortSettings

_FORMATS = ("dicom", "nifti", "covidx", "covidctnet")


def register(sub: argparse._SubParsersAction) -> None:
    d = CohortSettings()
    p = sub.add_parser(
        "synth", help="write a SYNTHETIC labelled cohort of chest-CT phantoms (Normal/CP/NCP)",
        description="Generate chest-CT phantoms in HU (body, lungs with vessels and airways, "
                    "heart, spine, ribs, table, scanner noise) with class-specific findings "
                    "(NCP: bilateral peripheral ground glass; CP: lobar/segmental consolidation "
                    "with air bronchograms; Normal: none) and write them as DICOM series, NIfTI "
                    "volumes with lesion masks, a COVIDx CT-format PNG slice set with split "
                    "files, a CovidCTNet folder-per-class layout, labels.csv, README.md and a "
                    "montage. The same seed and settings write the same files. "
                    + SYNTHETIC_NOTICE)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder, written atomically; an earlier synth cohort there is "
                        "replaced, any other non-empty folder is refused")
    p.add_argument("--patients", type=int, default=d.patients, metavar="N",
                   help="number of patients, balanced over Normal, CP and NCP (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed: same seed, same cohort (default: %(default)s)")
    p.add_argument("--difficulty", type=float, default=d.difficulty, metavar="D",
                   help="0-1: 0 gives large typical lesions; higher values shrink and fade "
                        "lesions, make distributions atypical (unilateral/central COVID-19, "
                        "bilateral/ground-glass-like CP) and add normal variants to every class (default: %(default)s)")
    p.add_argument("--matrix", type=int, default=d.matrix, metavar="PIXELS",
                   help="in-plane matrix (e.g. 64, 128, 256, 512); the field of view is kept, "
                        "so pixels grow as the matrix shrinks; COVIDx PNGs are always 512x512 "
                        "(default: %(default)s)")
    p.add_argument("--slice-mm", type=float, nargs=2, default=list(d.slice_mm),
                   metavar=("MIN", "MAX"),
                   help="range of slice spacings (mm); each scan takes a common scanner value "
                        "within it (default: 2.5 5)")
    p.add_argument("--max-slices", type=int, default=d.max_slices, metavar="K",
                   help="cap on slices per scan: spacing is widened so the scan still runs "
                        "from upper abdomen to thoracic inlet; 0 = no cap (default: %(default)s)")
    p.add_argument("--split", type=float, nargs=3, default=list(d.split),
                   metavar=("TRAIN", "VAL", "TEST"),
                   help="patient fractions of the train/val/test splits, stratified by class "
                        "(default: 0.6 0.2 0.2)")
    p.add_argument("--formats", default=",".join(d.formats),
                   help="comma-separated outputs to write, from: " + ",".join(_FORMATS)
                        + " (default: all)")
    p.add_argument("--variants", default="", metavar="LIST",
                   help="harder anatomy for testing lung masks, comma-separated from: "
                        "thin-wall,off-centre,fov-edge,stomach-gas,table-close; each patient gets "
                        "each listed variant with probability 0.5 (default: none)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes making patients at once; any number writes the same files "
                        "(default: one per core, at most 4)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..synth.cohort import generate_cohort

    settings = CohortSettings(
        patients=args.patients, seed=args.seed, difficulty=args.difficulty, matrix=args.matrix,
        slice_mm=(args.slice_mm[0], args.slice_mm[1]),
        max_slices=args.max_slices if args.max_slices and args.max_slices > 0 else None,
        split=(args.split[0], args.split[1], args.split[2]),
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
    ).check()
    summary = generate_cohort(args.out, settings, progress=not args.no_progress,
                              workers=args.workers)
    for line in summary.lines():
        print(line)
    return 0
