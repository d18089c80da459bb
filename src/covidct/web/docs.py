"""API documentation that works offline: the OpenAPI schema rendered as one HTML page.

FastAPI's Swagger UI loads its JavaScript from a CDN, which a hospital network without
internet access cannot reach (and a CDN's script would run with the page's rights); this
page is drawn on the server from the same schema (``/openapi.json``), with no script at all.
"""
from __future__ import annotations

import html
from typing import Any

from ..constants import DISCLAIMER

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:960px;margin:1.5em auto;color:#1d2430}
.op{border:1px solid #d7dde5;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.verb{display:inline-block;min-width:4.5em;font-weight:700;color:#fff;border-radius:4px;padding:0 .4em;margin-right:.5em;text-align:center}
.get{background:#2a6fdb}.post{background:#1e8e3e}.delete{background:#c0392b}
code{background:#f0f2f5;padding:0 .25em;border-radius:3px}td,th{border-bottom:1px solid #e3e7ec;padding:2px 8px;text-align:left}
table{border-collapse:collapse}.disclaimer{background:#fff4d6;padding:.4em}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def render_docs(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(info.get('title'))} API"
             f"</title><style>{CSS}</style></head><body>",
             f"<p class='disclaimer'>{_e(DISCLAIMER)}</p>",
             f"<h1>{_e(info.get('title'))} {_e(info.get('version'))} HTTP API</h1>",
             f"<p>{_e(info.get('description', ''))}</p>",
             "<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a>. With a "
             "server token, send <code>Authorization: Bearer TOKEN</code> on every /api "
             "request.</p>"]
    for path, operations in schema.get("paths", {}).items():
        for verb, op in operations.items():
            parts.append(_operation(path, verb, op))
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(path: str, verb: str, op: dict[str, Any]) -> str:
    out = [f"<div class='op'><span class='verb {verb}'>{verb.upper()}</span><code>{_e(path)}</code>"
           f" <b>{_e(op.get('summary', ''))}</b>"]
    if op.get("description"):
        out.append(f"<p>{_e(op['description'])}</p>")
    params = op.get("parameters") or []
    if params:
        rows = "".join(f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p.get('in'))}</td>"
                       f"<td>{'required' if p.get('required') else 'optional'}</td>"
                       f"<td>{_e(p.get('description') or p.get('schema', {}).get('default', ''))}</td></tr>"
                       for p in params)
        out.append(f"<table><tr><th>parameter</th><th>in</th><th></th><th>meaning / default</th></tr>"
                   f"{rows}</table>")
    body = (op.get("requestBody") or {}).get("content")
    if body:
        out.append(f"<p>Body: {_e(', '.join(body))} (multipart field <code>files</code>, "
                   "repeatable)</p>" if "multipart/form-data" in body else f"<p>Body: {_e(', '.join(body))}</p>")
    responses = op.get("responses") or {}
    out.append("<p>Answers: " + ", ".join(f"{_e(code)} {_e(r.get('description', ''))}"
                                         for code, r in responses.items()) + "</p></div>")
    return "".join(out)
