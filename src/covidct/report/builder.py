"""Assemble the report: discover the inputs, build every section, write one HTML file.

The file is self-contained (pictures embedded as base64 PNG/SVG, inline CSS, no scripts, no
external URL) so it opens offline, and it is written atomically.
"""
from __future__ import annotations

import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_text
from ..constants import DISCLAIMER, SYNTHETIC_NOTICE
from ..covidx import SPLIT_FILES
from ..errors import DatasetError
from .datasets import data_section
from .discover import Findings, discover
from .evaluations import method_sections
from .guide import glossary_section
from .html import esc, section
from .predictions import predictions_section
from .runs import experiments_section, training_section
from .summary import reproducibility_section, summary_section
from .template import PAGE

DEFAULT_NAME = "report.html"
LOOKED_FOR = ("training runs (config.json + history.csv), evaluations (results.json), "
              f"dataset folders (labels.csv or {SPLIT_FILES}), predictions (<method>.json) "
              "or experiments (experiment.json)")


def build_report(root: str | os.PathLike, out: str | os.PathLike | None = None,
                 title: str | None = None) -> Path:
    """Write the HTML report for the folder ``root`` to ``out`` (default ``root/report.html``).

    Raises DatasetError when ``root`` does not exist or holds nothing a report can show.
    """
    root = Path(root)
    found = discover(root)
    if found.empty:
        raise DatasetError(f"nothing to report: no {LOOKED_FOR} found", root)
    out = Path(out) if out is not None else root / DEFAULT_NAME
    command = shlex.join(["covidct", "report", str(root), "--out", str(out)])
    # atomic writes get the umask's permissions: the report can be shared as it is
    return write_text(out, render(found, title=title, command=command))


def render(found: Findings, title: str | None = None, command: str = "covidct report") -> str:
    """The report's HTML for what :func:`discover` found."""
    parts = [("summary", "Summary", summary_section(found)),
             ("data", "Data", data_section(found))]
    for anchor, heading, body in method_sections(found):
        parts.append((anchor, heading, section(anchor, heading, body)))
    if found.experiments:
        parts.append(("experiments", "Experiments", experiments_section(found)))
    parts += [("training", "Training", training_section(found)),
              ("predictions", "Example predictions", predictions_section(found)),
              ("reproducibility", "Commands and versions",
               reproducibility_section(found, command)),
              ("glossary", "How to read the figures", glossary_section())]
    toc = ('<nav class="toc"><strong>Contents</strong><ol>'
           + "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t, _ in parts) + "</ol></nav>")
    banner = (f'<div class="banner" role="alert"><span>{esc(SYNTHETIC_NOTICE)}</span></div>'
              if found.synthetic else "")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from .. import __version__

    return PAGE.substitute(
        title=esc(title or "covidct evaluation report"),
        subtitle=esc(f"COVID-19 detection in chest CT: the BiT slice classifier and CovidCTNet. "
                     f"Folder {found.root.name or found.root}; generated {generated} by covidct {__version__}."),
        banner=banner, disclaimer=esc(DISCLAIMER), toc=toc,
        body="\n".join(html for _, _, html in parts),
        footer=esc(f"{DISCLAIMER} Made by covidct {__version__}; this file is self-contained "
                   "and can be shared and opened offline. It holds no patient names, IDs or dates."))
