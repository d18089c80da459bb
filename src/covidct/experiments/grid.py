"""Grids and overrides: from a preset plus ``--config``/``--set`` to the list of runs.

Override rules (``--set KEY=VALUE``, values read as YAML; a YAML ``--config`` file holds the
same keys, or ``grid:`` and ``settings:`` mappings):

- ``KEY`` naming an axis of the preset's grid replaces that axis (a scalar is a one-value axis):
  ``--set mixup=[true]``, ``--set init=[random,bit-m]``;
- ``grid.KEY`` makes any setting an axis: ``--set grid.seed=[0,1,2]`` repeats every run;
- any other ``KEY`` replaces a fixed setting: ``--set schedule=1,2,4``, ``--set batch_size=16``.

A preset's ``sweep`` axes (the learning curve's ``train_patients`` and ``difficulty``) are not
crossed with each other: each is varied with the others at ``centre`` (a setting).

``resolution`` values are a paper preset by crop size (``"480"``), ``"resize,crop"`` or a
``[resize, crop]`` pair; ``schedule`` values a preset name (``bit-10000``), ``"hyperrule"``,
or step boundaries (``"500,3000,6000,9000,10000"`` or a list).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import CovidctError
from .presets import Preset, base_grid, base_settings


#: Settings that change where and how fast a run goes, not its result: a run started on one
#: machine is found again (and resumed) on another.
MACHINERY = ("device", "workers", "cache_dir")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its axis values and every setting it uses."""

    id: str
    axes: dict[str, Any]
    params: dict[str, Any]


@dataclass
class Plan:
    grid: dict[str, list[Any]]
    settings: dict[str, Any]
    overrides: dict[str, Any]
    sweep: tuple[str, ...] = ()      # axes varied one at a time (Preset.sweep)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> {key: YAML value}, in order (a later key wins)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CovidctError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise CovidctError(f"--set {item!r}: value is not valid YAML "
                               f"({str(exc).splitlines()[0]})") from None
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """A grid YAML file -> flat overrides (``grid:`` entries become ``grid.KEY``)."""
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CovidctError(f"cannot read the config file ({exc.strerror})", path) from None
    except yaml.YAMLError as exc:
        raise CovidctError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise CovidctError("the config file must hold a mapping of settings and/or grid:", path)
    flat: dict[str, Any] = {}
    for key, value in content.items():
        if key in ("grid", "settings"):
            if not isinstance(value, dict):
                raise CovidctError(f"{key}: must be a mapping", path)
            prefix = "grid." if key == "grid" else ""
            flat.update({f"{prefix}{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def make_plan(preset: Preset, scale: str, overrides: dict[str, Any]) -> Plan:
    """The preset's grid and settings at ``scale`` with the overrides applied."""
    grid = base_grid(preset, scale)
    settings = base_settings(preset, scale)
    known = set(grid) | set(settings)
    for key, value in overrides.items():
        axis = key[5:] if key.startswith("grid.") else None
        name = axis or key
        if name not in known:
            raise CovidctError(f"unknown setting {name!r} for experiment {preset.name}; known: "
                               f"{', '.join(sorted(known))}")
        if axis or name in grid:
            values = value if isinstance(value, list) else [value]
            if not values:
                raise CovidctError(f"grid axis {name!r} needs at least one value")
            grid[name] = values
            settings.pop(name, None)
        else:
            settings[name] = value
    sweep = tuple(a for a in preset.sweep if a in grid)
    if sweep:
        _check_centre(settings.get("centre"), sweep, preset.name)
    return Plan(grid, settings, dict(overrides), sweep)


def _check_centre(centre: Any, sweep: tuple[str, ...], name: str) -> None:
    missing = [a for a in sweep if not isinstance(centre, dict) or a not in centre]
    if missing:
        raise CovidctError(f"experiment {name}: centre needs a value for {', '.join(missing)} "
                           f"(e.g. --set 'centre={{{', '.join(f'{a}: ...' for a in sweep)}}}')")


def _combinations(plan: Plan) -> list[dict[str, Any]]:
    """The grid's axis values per run: crossed axes as a product; swept axes one at a time,
    the other swept axes at their centre value (a point shared by two sweeps runs once)."""
    crossed = [n for n in plan.grid if n not in plan.sweep]
    points: list[dict[str, Any]] = []
    if plan.sweep:
        centre = plan.settings["centre"]
        for axis in plan.sweep:
            for value in plan.grid[axis]:
                point = {a: (value if a == axis else centre[a]) for a in plan.sweep}
                if point not in points:
                    points.append(point)
    else:
        points = [{}]
    combos = []
    for values in itertools.product(*(plan.grid[n] for n in crossed)):
        for point in points:
            combo = {**dict(zip(crossed, values)), **point}
            combos.append({n: combo[n] for n in plan.grid})   # the grid's axis order
    return combos


def expand(plan: Plan, scale: str) -> list[RunSpec]:
    """Every combination of the grid's axes, each with a stable, readable run id."""
    runs = []
    for axes in _combinations(plan):
        params = {**plan.settings, **axes, "scale": scale}
        runs.append(RunSpec(run_id(axes, params), axes, params))
    seen: set[str] = set()
    for run in runs:
        if run.id in seen:
            raise CovidctError(f"the grid lists run {run.id} twice; remove the repeated value")
        seen.add(run.id)
    return runs


def run_id(axes: dict[str, Any], params: dict[str, Any]) -> str:
    """``resolution-128_mixup-on-3f2a1c``: axis values, then a hash of every setting, so that a
    rerun with other settings never mistakes an old run folder for its own."""
    parts = [f"{_slug(k)}-{_slug(_value_text(v))}" for k, v in axes.items()] or ["run"]
    hashed = {k: v for k, v in params.items() if k not in MACHINERY}
    digest = hashlib.sha1(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return "_".join(parts) + "-" + digest


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "", text.replace(",", "x").replace("/", "-"))[:40] or "x"
