"""Small HTML building blocks: escaping, tables, figures with a reading note, number formats.

Everything that comes from a file is escaped here; sections only assemble these pieces.
"""
from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Sequence

from ..metrics.tables import as_number, format_figure

def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, mime: str = "image/png", alt: str = "", css: str = "") -> str:
    style = f' class="{esc(css)}"' if css else ""
    return f'<img{style} alt="{esc(alt)}" src="{data_uri(data, mime)}">'


# Numbers -------------------------------------------------------------------------------

def pct(figure: Any, digits: int = 1) -> str:
    """A proportion in % with its CI as ``97.1% [95.2, 98.4]``; ``n/a`` when undefined."""
    return format_figure(figure, 100, digits, "%")


def dec(figure: Any, digits: int = 3) -> str:
    """A figure on its own scale (AUC, F1, ECE) with its CI as ``0.971 [0.952, 0.984]``."""
    return format_figure(figure, 1, digits)


def count(value: Any) -> str:
    number = as_number(value)
    return "n/a" if number is None else f"{int(number):,}"


# Structure -------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "",
          css: str = "", raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (for cells already built from these helpers)."""
    cell = (lambda v: str(v)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    # The caption is a paragraph above the table, not <caption>: a <caption> is as narrow as its
    # table and wraps into a column above small tables.
    cap = f'<p class="tcap">{esc(caption)}</p>' if caption else ""
    cls = f' class="{esc(css)}"' if css else ""
    return f"{cap}<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, Any]], columns: int = 1) -> str:
    """A two-column (name, value) table; ``columns`` > 1 puts that many pairs on each row."""
    cells = [f"<th>{esc(k)}</th><td>{esc(v)}</td>" for k, v in pairs if v not in (None, "")]
    if not cells:
        return ""
    rows = "".join("<tr>" + "".join(cells[i:i + columns]) + "</tr>" for i in range(0, len(cells), columns))
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def figure(image_html: str, caption: str, how_to_read: str = "") -> str:
    """A figure with its title above and the "how to read this" note below."""
    note = f'<p class="how">How to read this: {esc(how_to_read)}</p>' if how_to_read else ""
    title = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{title}{image_html}{note}</figure>"


def figure_row(figures_html: list[str]) -> str:
    """Figures side by side where the page is wide enough, wrapping otherwise."""
    return f'<div class="figrow">{"".join(figures_html)}</div>'


def note(text: str, css: str = "note") -> str:
    return f'<p class="{esc(css)}">{esc(text)}</p>'


def missing(what: str, looked_for: str) -> str:
    """The one-line note a section shows when it found nothing to show."""
    return f'<p class="missing">{esc(what)} (looked for {esc(looked_for)}).</p>'


def section(anchor: str, title: str, body: str, level: int = 2) -> str:
    return (f'<section id="{esc(anchor)}"><h{level}>{esc(title)}</h{level}>{body}</section>')


def subsection(title: str, body: str) -> str:
    return f"<h3>{esc(title)}</h3>{body}"


def code(text: str) -> str:
    return f"<pre><code>{esc(text)}</code></pre>"
