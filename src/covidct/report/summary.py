"""The first and the last section: the headline figures, and the commands and versions to repeat them."""
from __future__ import annotations

import platform
from typing import Any, Mapping

import matplotlib
import numpy as np

from .. import __version__
from . import figures
from .common import evaluation_title, headline_level, is_scan_level, levels_of
from .discover import Findings
from .html import code, count, dec, esc, key_values, missing, note, pct, section


def summary_section(found: Findings) -> str:
    cards = []
    for ev in found.evaluations:
        levels = levels_of(ev.results.get("metrics") or {})
        if not levels:
            continue
        name = headline_level(levels)
        result = levels[name]
        binary = result.get("binary") or {}
        positive = binary.get("positive_class") or "COVID-19"
        lines = [f"<li>{esc(positive)} sensitivity {esc(pct(binary.get('sensitivity')))}</li>",
                 f"<li>{esc(positive)} specificity {esc(pct(binary.get('specificity')))}</li>",
                 f"<li>{esc(positive)}-vs-rest AUC {esc(dec(binary.get('auc')))}</li>",
                 f"<li>{count(result.get('n_patients'))} patients"
                 + ("" if is_scan_level(name, result) else f", {count(result.get('n_slices'))} slices")
                 + "</li>"]
        badge = ' <span class="badge syn">SYNTHETIC</span>' if ev.synthetic else ""
        cards.append(f'<div class="card"><h4>{esc(evaluation_title(ev))}{badge}</h4>'
                     f'<div>{esc(figures.level_title(name))} accuracy</div>'
                     f'<div class="big">{esc(pct(result.get("accuracy")))}</div>'
                     f'<ul>{"".join(lines)}</ul></div>')
    body = (f'<div class="cards">{"".join(cards)}</div>' + note(
        "Accuracy with its 95% confidence interval at the level a clinician decides on (the "
        "patient or scan); details, slice-level figures and pictures follow below.")
            if cards else missing("No evaluation results yet", "results.json from covidct evaluate"))
    found_list = (f"Found in <code>{esc(found.root.name or found.root)}</code>: "
                  f"{len(found.runs)} training run(s), {len(found.evaluations)} evaluation(s), "
                  f"{len(found.cohorts)} dataset folder(s), {len(found.predictions)} example prediction(s).")
    return section("summary", "Summary", body + f'<p class="note">{found_list}</p>')


def reproducibility_section(found: Findings, report_command: str) -> str:
    parts = []
    for run in found.runs:
        parts.append(f"<h3>Training run <code>{esc(found.relative(run.path))}</code></h3>")
        if run.config.get("command"):
            parts.append(code(str(run.config["command"])))
        versions = run.config.get("versions")
        if isinstance(versions, Mapping):
            parts.append(key_values(sorted(versions.items())))
    for ev in found.evaluations:
        prov = ev.provenance
        parts.append(f"<h3>Evaluation <code>{esc(found.relative(ev.path))}</code></h3>")
        if prov.get("command"):
            command = str(prov["command"])
            parts.append(code(command) if not command.startswith("-c") else
                         note("Run from a Python session (no command line to repeat)."))
        parts.append(key_values([("covidct", prov.get("covidct_version") or ev.results.get("covidct_version")),
                                 ("python", prov.get("python")),
                                 ("results written (UTC)", ev.results.get("created_utc")),
                                 ("bootstrap", _boot_text(prov.get("settings")))]))
    parts.append("<h3>This report</h3>" + code(report_command) + key_values(_own_versions()))
    return section("reproducibility", "Commands and versions", "".join(parts))


def _boot_text(settings: Any) -> str | None:
    if not isinstance(settings, Mapping) or "n_boot" not in settings:
        return None
    return f"{settings['n_boot']} resamples of patients, seed {settings.get('seed', '?')}"


def _own_versions() -> list[tuple[str, str]]:
    return [("covidct", __version__), ("python", platform.python_version()),
            ("numpy", np.__version__), ("matplotlib", matplotlib.__version__),
            ("platform", platform.platform())]
