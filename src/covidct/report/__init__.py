"""The HTML report: ``build_report(folder, out)`` -> one self-contained file for clinicians.

See :mod:`.discover` for what is looked for inside the folder and :mod:`.builder` for the
sections in page order, each built by its own module (:mod:`.summary`, :mod:`.datasets`,
:mod:`.evaluations`, :mod:`.runs`, :mod:`.predictions`, :mod:`.guide`). Pictures are
embedded (base64 PNG/SVG); no scripts, no external links.
"""
from __future__ import annotations

from .builder import DEFAULT_NAME, build_report, render
from .discover import Findings, discover

__all__ = ["DEFAULT_NAME", "Findings", "build_report", "discover", "render"]
