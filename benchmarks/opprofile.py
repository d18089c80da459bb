"""Where row 1's time goes: ONNX Runtime's own profile of the slice classifier's float32 and
int8 graphs, summed per operator type.

    python -m benchmarks.opprofile [--tiny] [--threads 1] [--workdir DIR]

Row 1 reports each path's fraction of the matmul peak; this says which operators keep it
there. On the 2-core Xeon of BENCHMARKS.md (2026-12-06, one thread, batch 1, random weights)
the float32 graph spent 68% of its kernel time in convolutions and the rest in GroupNorm (as
exported: InstanceNormalization, then Mul and Add for its affine) and the layout reorders
around it; the int8 graph spent 33% in QLinearConv. Random weights: this measures time only.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import FULL, TINY


def op_shares(graph: Path, inputs: np.ndarray, threads: int = 1, runs: int = 3
              ) -> tuple[float, dict[str, float]]:
    """Mean seconds per call and each operator type's share of the kernel time, largest first.
    The session is the one prediction builds (covidct.export's options and disabled
    optimisations), with ONNX Runtime's profiler switched on."""
    import onnxruntime as ort

    from covidct.export import DISABLED_OPTIMIZERS, session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(graph.with_suffix(""))
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(DISABLED_OPTIMIZERS))
    feed = {session.get_inputs()[0].name: inputs}
    session.run(None, feed)  # warm-up: first-call allocations are not the model's time
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    seconds = (time.perf_counter() - start) / runs
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"].get("op_name", "?")] += event["dur"]
    total = sum(per_op.values()) or 1
    return seconds, {op: t / total for op, t in per_op.most_common()}


def profile_row1(tiny: bool, threads: int, workdir: Path) -> dict[str, Any]:
    """Row 1's network exported as `covidct export` does, quantized as its int8 path does."""
    import torch

    from covidct.bit.model import build_network
    from covidct.export import export_network, fold_weight_standardization

    from .slices import _int8_graph

    sizes = TINY if tiny else FULL
    torch.manual_seed(0)
    net = build_network(sizes.arch).eval()
    shape = (1, 3, sizes.crop, sizes.crop)
    float_graph = export_network(fold_weight_standardization(net), shape, {0: "batch"},
                                 workdir / "bit.onnx")
    graphs = {"float32": float_graph, "int8": _int8_graph(float_graph, sizes)}
    inputs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    result = {}
    for name, graph in graphs.items():
        seconds, shares = op_shares(graph, inputs, threads, runs=sizes.reps + 1)
        result[name] = {"seconds_per_slice": seconds, "op_shares": shares}
    return {"arch": sizes.arch, "crop": sizes.crop, "threads": threads, "graphs": result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.opprofile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny network at 64 px (seconds)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the graphs and profiles go (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    with tempfile.TemporaryDirectory(prefix="covidct-opprofile-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = profile_row1(args.tiny, args.threads, workdir)
    print(f"{result['arch']} @ {result['crop']}, {result['threads']} thread(s), batch 1")
    for name, graph in result["graphs"].items():
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(graph["op_shares"].items())[:8])
        print(f"  {name}: {graph['seconds_per_slice']:.3f} s/slice; {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
