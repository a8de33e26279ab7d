"""A tiny document model rendered twice: one self-contained HTML page and its Markdown twin.

The sections build a list of blocks (headings, paragraphs, tables, figures, bullet lists); both
renderers walk the same list, so the two files carry the same content. Every string from the
inputs is escaped: HTML with `html.escape`, Markdown by backslash-escaping the characters that
would change a table or inline markup (and `<`, `>`, `&` as entities, so no raw HTML gets in).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    """An inline code span inside a paragraph."""

    text: str


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[str | Code, ...]

    def __init__(self, *parts: str | Code):
        object.__setattr__(self, "parts", tuple(parts))


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    highlight: frozenset[int] = frozenset()  # row indices shown bold
    caption: str | None = None


@dataclass(frozen=True)
class Figure:
    name: str  # file name under figures/, e.g. "probe.png"
    png: bytes
    caption: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


Block = Heading | Paragraph | Table | Figure | Bullets


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#222;background:#fff;margin:0;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5em 2em 3em}
h1{font-size:1.8em;border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{font-size:1.4em;margin-top:1.8em;border-bottom:1px solid #eee;padding-bottom:.2em}
h3{font-size:1.15em;margin-top:1.4em}
table{border-collapse:collapse;margin:.8em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.3em .65em;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f3f5f7}
tr:nth-child(even) td{background:#fafbfc}
tr.hl td{font-weight:600;background:#fff6d6}
caption{caption-side:top;text-align:left;color:#555;font-size:.95em;padding-bottom:.3em}
figure{margin:1em 0 1.6em}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.92em;margin-top:.3em}
code{background:#f3f5f7;padding:.1em .3em;border-radius:3px;font-size:.92em}
ul.conclusion li{margin:.35em 0}
.scroll{overflow-x:auto}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _html_parts(parts: tuple[str | Code, ...]) -> str:
    return "".join(f"<code>{html.escape(p.text)}</code>" if isinstance(p, Code)
                   else html.escape(p) for p in parts)


def render_html(doc: Document) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(doc.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<main>", f"<h1>{e(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out.append(f'<h{block.level} id="{_slug(block.text)}">{e(block.text)}</h{block.level}>')
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_html_parts(block.parts)}</p>")
        elif isinstance(block, Table):
            rows = ['<div class="scroll"><table>']
            if block.caption:
                rows.append(f"<caption>{e(block.caption)}</caption>")
            rows.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header)
                        + "</tr></thead><tbody>")
            for i, row in enumerate(block.rows):
                cls = ' class="hl"' if i in block.highlight else ""
                rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            rows.append("</tbody></table></div>")
            out.append("".join(rows))
        elif isinstance(block, Figure):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f'<figure><img alt="{e(block.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(block.caption)}</figcaption></figure>")
        elif isinstance(block, Bullets):
            out.append('<ul class="conclusion">'
                       + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>")
        else:  # pragma: no cover - the Block union is closed
            raise TypeError(f"unknown block {block!r}")
    out += ["</main>", "</body>", "</html>", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*\[\]|#])")


def md_escape(text: str) -> str:
    """Escape text for Markdown prose and table cells (underscores inside words are left alone,
    so names like mid_lowrank stay readable)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\n", " ")


def _md_code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_parts(parts: tuple[str | Code, ...]) -> str:
    return "".join(_md_code(p.text) if isinstance(p, Code) else md_escape(p) for p in parts)


def render_markdown(doc: Document, figure_dir: str = "figures") -> str:
    out = [f"# {md_escape(doc.title)}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + md_escape(block.text), ""]
        elif isinstance(block, Paragraph):
            out += [_md_parts(block.parts), ""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"*{md_escape(block.caption)}*", ""]
            out.append("| " + " | ".join(md_escape(h) for h in block.header) + " |")
            out.append("|" + "|".join([":---"] + ["---:"] * (len(block.header) - 1)) + "|")
            for i, row in enumerate(block.rows):
                cells = [md_escape(c) for c in row]
                if i in block.highlight:
                    cells = [f"**{c}**" if c else c for c in cells]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        elif isinstance(block, Figure):
            out += [f"![{md_escape(block.caption)}]({figure_dir}/{block.name})", "",
                    f"*{md_escape(block.caption)}*", ""]
        elif isinstance(block, Bullets):
            out += [f"- {md_escape(item)}" for item in block.items] + [""]
        else:  # pragma: no cover
            raise TypeError(f"unknown block {block!r}")
    return "\n".join(out).rstrip() + "\n"
