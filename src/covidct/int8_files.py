"""Where an int8 graph and its parity record live beside (or in the cache next to) the float graph.

File naming and the parity record only, so that :mod:`covidct.export` (which runs the graphs)
and :mod:`covidct.quantize` (which writes them, on top of export's ONNX wrapper) share one
spelling without importing each other. Imports neither torch nor onnx.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INT8_SUFFIX = ".int8.onnx"
#: The parity rule a CovidCTNet int8 BCDU-Net record must have been judged by for
#: ``--runtime auto`` to use it: 2 judges the infection map too (covidct.quantize.
#: denoiser_parity); records of rule 1 (calls only, maps not judged) never qualify.
DENOISER_RULE_VERSION = 2


def int8_path(float_path: str | os.PathLike) -> Path:
    """Where the int8 graph of a float graph goes: ``bit.onnx`` -> ``bit.int8.onnx``."""
    float_path = Path(float_path)
    stem = float_path.name[:-5] if float_path.name.endswith(".onnx") else float_path.name
    return float_path.with_name(stem + INT8_SUFFIX)


def parity_path(path: str | os.PathLike) -> Path:
    """The check's record beside an int8 graph (read without loading the graph)."""
    return Path(str(path) + ".parity.json")


def read_parity(path: str | os.PathLike) -> dict[str, Any] | None:
    """The check :func:`covidct.quantize.export_int8` recorded for an int8 graph (None if
    absent or unreadable)."""
    try:
        return json.loads(parity_path(path).read_text())
    except (OSError, ValueError):
        return None
