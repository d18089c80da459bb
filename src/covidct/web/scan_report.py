"""A one-file HTML report of one scan's result (the page's "download report").

Self-contained (inline CSS, pictures as data URLs) so it can be filed or mailed as is.
"""
from __future__ import annotations

import base64
import html
from typing import Any

from ..constants import DISCLAIMER, SYNTHETIC_NOTICE

CSS = """body{font:14px/1.4 system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}
.disclaimer{background:#fff4d6;border:1px solid #e0b84a;padding:.6em}
.synthetic{background:#6b2fa0;color:#fff;padding:.6em;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
figure{display:inline-block;margin:.5em}figcaption{font-size:12px}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _top_slices(scores: list[float | None], n: int = 3) -> list[int]:
    ranked = sorted((s, k) for k, s in enumerate(scores) if s is not None)
    return sorted(k for _, k in ranked[-n:])


def scan_report(result: dict[str, Any], renderer, show_phi: bool = False) -> str:
    call = result["call"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>covidct report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<p class='disclaimer'>{_e(DISCLAIMER)}</p>"]
    if result.get("synthetic"):
        parts.append(f"<p class='synthetic'>{_e(SYNTHETIC_NOTICE)}</p>")
    parts.append(f"<h1>covidct: {_e(call['label'])}</h1>")
    if show_phi and result.get("phi"):
        parts.append("<p>" + ", ".join(f"{_e(k)}: {_e(v)}" for k, v in result["phi"].items()) + "</p>")
    parts.append(f"<p>Scan: {_e(result['scan']['summary'])}. Job {_e(result['id'])}.</p>")
    parts.append(f"<p>Mean COVID-19 probability over methods: {call['covid19_probability']:.1%}; "
                 f"rule: {_e(call['rule'])}.</p>")
    for method, pred in result["methods"].items():
        rows = "".join(f"<tr><td>{_e(c)}</td><td>{p:.1%}</td></tr>"
                       for c, p in pred["probabilities"].items())
        model = pred.get("model") or {}
        file = model.get("file")
        file = file.get("name") if isinstance(file, dict) else file
        parts.append(f"<h2>{_e(method)}: {_e(pred['label'])}</h2><table><tr><th>class</th>"
                     f"<th>probability</th></tr>{rows}</table>"
                     f"<p>Aggregation: {_e(pred.get('aggregation', ''))}</p>"
                     f"<p>Model: {_e(file or model.get('name'))}, "
                     f"version {_e(model.get('version') or model.get('covidct_version'))}.</p>")
    for method, error in (result.get("errors") or {}).items():
        parts.append(f"<h2>{_e(method)}: not run</h2><p>{_e(error)}</p>")
    parts.append(_pictures(result, renderer))
    timings = ", ".join(f"{_e(k)} {v:.2f} s" for k, v in result.get("timings_s", {}).items())
    parts.append(f"<p>Timings: {timings}.</p><p class='disclaimer'>{_e(DISCLAIMER)}</p></body></html>")
    return "\n".join(parts)


def _pictures(result: dict[str, Any], renderer) -> str:
    scores = result.get("slice_scores") or {}
    figures = []
    for method, overlay in (("bit", "gradcam"), ("covidctnet", "infection")):
        if method not in scores:
            continue
        for k in _top_slices(scores[method]):
            try:
                png = renderer.slice_png(result["id"], k, result, overlay=overlay)
            except Exception:  # a picture must never cost the report
                continue
            data = base64.b64encode(png).decode()
            figures.append(f"<figure><img width='200' src='data:image/png;base64,{data}'>"
                           f"<figcaption>slice {k + 1}, {overlay}</figcaption></figure>")
    if not figures:
        return ""
    return "<h2>Slices that drove the call</h2>" + "".join(figures)
