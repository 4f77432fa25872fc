"""The page shell: one self-contained HTML file (inline CSS, figures as base64 PNG), no scripts,
fonts or URLs, so it opens from a file:// URL with no network. The layout is one column that
fits any width: figures scale down (``max-width: 100%``), wide tables scroll inside their own
box, long names wrap, so the page itself never scrolls sideways (checked at 390 px in a browser
by tests/test_report_browser.py).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from clifvqa._version import __version__

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1b1f24;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:16px}
header{padding:4px 0 8px}
h1{font-size:1.5rem;margin:.2em 0}
h2{font-size:1.2rem;margin:0 0 .6em;border-bottom:1px solid #d8dce1;padding-bottom:.2em}
h3{font-size:1.02rem;margin:1em 0 .4em}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:14px 16px;margin:14px 0}
h1,h2,h3,p,li,figcaption,summary{overflow-wrap:anywhere}
.sub{color:#57606a;font-size:.92rem}
.note{color:#57606a;font-size:.88rem}
.warn{background:#fff8e1;border-left:4px solid #e6a700;padding:6px 10px}
figure{margin:10px 0}
figure img{display:block;max-width:100%;height:auto;border:1px solid #eef0f2}
figcaption{color:#57606a;font-size:.86rem;margin-top:4px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.9rem;margin:6px 0}
th,td{border-bottom:1px solid #e6e8eb;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f4f6;font-weight:600}
td.l,th.l{text-align:left;overflow-wrap:anywhere}
td.best{font-weight:700}
.pos{color:#1a7f37}.neg{color:#cf222e}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.card{border:1px solid #e1e4e8;border-radius:6px;padding:8px;font-size:.88rem;overflow-wrap:anywhere}
.card img{display:block;width:100%;height:auto;image-rendering:auto}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.82rem;background:#f6f8fa;padding:8px;border-radius:6px}
a{color:#0969da}
nav a{margin-right:12px}
@media (max-width:600px){main{padding:8px}section{padding:10px}body{font-size:14px}th,td{padding:3px 5px}}
"""


class Raw(str):
    """HTML that is already escaped (a cell or body given as markup)."""


def esc(value: object) -> str:
    """``value`` as HTML text (``Raw`` passes through)."""
    return value if isinstance(value, Raw) else html.escape(str(value))


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "", cls: str = "fig") -> Raw:
    """A figure: the PNG inline, its alt text, and a caption under it."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Raw(f'<figure class="{cls}"><img src="{png_uri(png)}" alt="{esc(alt)}">{cap}</figure>')


@dataclass(frozen=True)
class Cell:
    """A table cell with attributes (``data-*`` marks the numbers tests compare with the files)."""

    text: object
    cls: str = ""
    attrs: dict[str, str] = field(default_factory=dict)

    def render(self, tag: str = "td") -> str:
        attrs = "".join(f' {k}="{esc(v)}"' for k, v in self.attrs.items())
        cls = f' class="{self.cls}"' if self.cls else ""
        return f"<{tag}{cls}{attrs}>{esc(self.text)}</{tag}>"


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], *, table_id: str = "",
          caption: str = "") -> Raw:
    """A table in a box of its own that scrolls sideways when wider than the page; the first
    column is left-aligned (names), cells may be :class:`Cell` or text."""
    def cell(value: object, tag: str, first: bool) -> str:
        if isinstance(value, Cell):
            return value.render(tag)
        return Cell(value, "l" if first else "").render(tag)

    head = "".join(cell(h, "th", i == 0) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell(v, "td", i == 0) for i, v in enumerate(r)) + "</tr>" for r in rows)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    cap = f"<caption class=\"note\">{esc(caption)}</caption>" if caption else ""
    return Raw(f'<div class="scroll"><table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
               "</table></div>")


def details(summary: str, body: str) -> Raw:
    """A collapsed block (e.g. the run config)."""
    return Raw(f"<details><summary>{esc(summary)}</summary>{body}</details>")


def pre(text: str) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


def para(text: object, cls: str = "") -> Raw:
    attr = f' class="{cls}"' if cls else ""
    return Raw(f"<p{attr}>{esc(text)}</p>")


@dataclass
class Section:
    """One box of the page: a title and its HTML."""

    title: str
    body: list[str] = field(default_factory=list)
    anchor: str = ""

    def render(self) -> str:
        ident = f' id="{esc(self.anchor)}"' if self.anchor else ""
        return f"<section{ident}><h2>{esc(self.title)}</h2>{''.join(self.body)}</section>"


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections if s.anchor)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>"
        + (f"<nav>{nav}</nav>" if nav else "")
        + "</header>"
        + "".join(s.render() for s in sections)
        + f'<p class="note">written by clifvqa {esc(__version__)} (clifvqa report)</p>'
        "</main></body></html>\n"
    )
