"""Finished runs of an experiment grouped by their settings, with mean and spread over repeats
(shared by the tables in :mod:`.outputs` and the figures in :mod:`.figures`)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def axis_text(value: Any) -> str:
    """An axis value as text (a list as comma-separated values)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def finished(outcome) -> list[dict[str, Any]]:
    return [r.result for r in outcome.runs if r.status != "failed" and r.result and "axes" in r.result]


def groups(results: list[dict[str, Any]], exclude=("seed",)) -> list[tuple[dict, list[dict]]]:
    """Results grouped by their axis values (repeats over ``exclude`` axes together), in order."""
    out: dict[str, tuple[dict, list[dict]]] = {}
    for result in results:
        key_axes = {k: v for k, v in result["axes"].items() if k not in exclude}
        key = repr(sorted((k, axis_text(v)) for k, v in key_axes.items()))
        out.setdefault(key, (key_axes, []))[1].append(result)
    return list(out.values())


def stats(values: list[Any]) -> tuple[float | None, float | None, int]:
    """(mean, sample SD or None, n) of the numbers among ``values``."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(float(v))]
    if not numbers:
        return None, None, 0
    sd = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else None
    return float(np.mean(numbers)), sd, len(numbers)
