"""The report's HTML page: one file, inline CSS, no scripts, no external resources.

Kept as a Python string (not a package data file) so it ships with any install of covidct.
Placeholders (``string.Template``): ``$title``, ``$subtitle``, ``$banner``, ``$disclaimer``,
``$toc``, ``$body``, ``$footer``.
"""
from __future__ import annotations

from string import Template

CSS = """
:root { --ink: #1d2733; --muted: #5b6673; --line: #d6dce3; --band: #f4f6f9; --accent: #0b5cad;
        --warn-bg: #fff1e6; --warn: #a63c00; --bad: #b00020; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--ink); background: #ffffff; }
main { max-width: 1180px; margin: 0 auto; padding: 0 28px 48px; }
header.top { background: #10324f; color: #ffffff; padding: 22px 28px 18px; }
header.top h1 { margin: 0 auto; max-width: 1180px; font-size: 26px; font-weight: 600; }
header.top p { margin: 4px auto 0; max-width: 1180px; color: #c9d6e3; font-size: 14px; }
.banner { background: #c62828; color: #ffffff; font-weight: 700; padding: 12px 28px;
          font-size: 16px; letter-spacing: 0.2px; border-bottom: 3px solid #8e0000; }
.banner span { display: block; max-width: 1180px; margin: 0 auto; }
.disclaimer { background: var(--warn-bg); color: var(--warn); padding: 10px 28px; font-weight: 600;
              border-bottom: 1px solid #f3c7a6; }
.disclaimer span { display: block; max-width: 1180px; margin: 0 auto; }
nav.toc { margin: 22px 0 8px; padding: 12px 18px; background: var(--band); border-radius: 6px; }
nav.toc ol { margin: 4px 0 0; padding-left: 22px; columns: 2; }
nav.toc a { color: var(--accent); text-decoration: none; }
h2 { font-size: 22px; margin: 38px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 17px; margin: 26px 0 8px; }
h4 { font-size: 15px; margin: 18px 0 6px; color: var(--muted); }
p { margin: 6px 0 10px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; }
p.tcap { font-weight: 600; margin: 10px 0 4px; color: var(--muted); font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: 5px 9px; text-align: left; vertical-align: top; }
thead th { background: var(--band); font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
table.kv th { background: var(--band); font-weight: 600; white-space: nowrap; }
table.kv { font-size: 13px; }
table.figures td:not(:first-child), table.figures th:not(:first-child) { text-align: right; white-space: nowrap; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin: 12px 0; }
.card { flex: 1 1 340px; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
        background: #fbfcfd; }
.card h4 { margin: 0 0 6px; color: var(--ink); font-size: 15px; }
.card .big { font-size: 20px; font-weight: 700; }
.card ul { margin: 6px 0 0; padding-left: 18px; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figure img.narrow { max-width: 560px; }
figure img.picture { max-height: 560px; width: auto; }
figcaption { font-weight: 600; margin: 0 0 6px; }
.figrow { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.figrow figure { flex: 0 1 auto; max-width: 100%; margin-top: 6px; display: table; }
.figrow figure p.how { display: table-caption; caption-side: bottom; }
p.how { color: var(--muted); font-size: 13.5px; margin: 4px 0 0; max-width: 900px; }
p.note, p.footnote { color: var(--muted); font-size: 13px; }
p.missing { color: var(--muted); font-style: italic; background: var(--band); padding: 8px 12px;
            border-left: 3px solid var(--line); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px; }
.gallery.wide { grid-template-columns: 1fr; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fbfcfd; }
.tile img { width: 100%; height: auto; display: block; }
.tile p { margin: 6px 0 0; font-size: 13px; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #ffffff; background: #5b6673; }
.badge.ok { background: #2e7d32; } .badge.bad { background: var(--bad); } .badge.syn { background: #c62828; }
pre { background: var(--band); padding: 8px 12px; border-radius: 4px; overflow-x: auto; font-size: 12.5px;
      white-space: pre-wrap; word-break: break-all; }
dl.glossary dt { font-weight: 700; margin-top: 8px; }
dl.glossary dd { margin: 2px 0 0 18px; color: var(--ink); }
footer { color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line); margin-top: 40px;
         padding-top: 10px; }
@media print { nav.toc { display: none; } section { break-inside: avoid-page; } }
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="covidct report">
<title>$title</title>
<style>""" + CSS + """</style>
</head>
<body>
<header class="top"><h1>$title</h1><p>$subtitle</p></header>
$banner
<div class="disclaimer" role="note"><span>$disclaimer</span></div>
<main>
$toc
$body
<footer>$footer</footer>
</main>
</body>
</html>
""")
