"""The report as data: sections of a few block kinds, rendered to HTML and to Markdown from the same tree.

One tree, two renderers, so the HTML and the Markdown can never say different things. Text in blocks is
plain (never markup): each renderer escapes it for its own format.
"""
from __future__ import annotations

import base64
import html
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class Block(ABC):
    """One piece of a section. Each kind renders itself to both formats, so a new kind is one class here."""

    @abstractmethod
    def as_html(self) -> str: ...

    @abstractmethod
    def as_markdown(self) -> str: ...


@dataclass
class Paragraph(Block):
    text: str

    def as_html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"

    def as_markdown(self) -> str:
        return _md_text(self.text)


@dataclass
class Fields(Block):
    """Label/value pairs, shown as a two-column table."""
    items: list[tuple[str, Any]]

    def as_html(self) -> str:
        rows = "".join(f"<tr><th>{html.escape(k)}</th>{_html_cell(str(cell_text(v)))}</tr>" for k, v in self.items)
        return f'<table class="fields">{rows}</table>'

    def as_markdown(self) -> str:
        return _md_table(["field", "value"], [[k, v] for k, v in self.items])


@dataclass
class Table(Block):
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def as_html(self) -> str:
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>" for row in self.rows)
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def as_markdown(self) -> str:
        caption = f"*{_md_text(self.caption)}*\n\n" if self.caption else ""
        return caption + _md_table(self.columns, self.rows)


@dataclass
class Figure(Block):
    name: str  # file stem under figures/ in the Markdown version
    png: bytes
    caption: str

    def as_html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        alt = html.escape(self.caption, quote=True)
        return (f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(self.caption)}</figcaption></figure>")

    def as_markdown(self) -> str:
        return f"![{_md_text(self.caption)}](figures/{self.name}.png)\n\n*{_md_text(self.caption)}*"


@dataclass
class Code(Block):
    text: str

    def as_html(self) -> str:
        return f"<pre><code>{html.escape(self.text)}</code></pre>"

    def as_markdown(self) -> str:
        # A fence longer than any run of backticks in the text: text holding ``` cannot close it and become markup.
        longest = max((len(run) for run in re.findall(r"`+", self.text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}\n{self.text}\n{fence}"


@dataclass
class FillIn(Block):
    """A field a person must write: the report cannot know it (intended use, clinical risk, sign-off)."""
    label: str
    prompt: str

    def as_html(self) -> str:
        return f'<div class="fill"><b>[{FILL_MARK}] {html.escape(self.label)}:</b> <i>{html.escape(self.prompt)}</i></div>'

    def as_markdown(self) -> str:
        return f"> **[{FILL_MARK}] {_md_text(self.label)}:** *{_md_text(self.prompt)}*"


@dataclass
class Notice(Block):
    """A highlighted line: ``missing`` (evidence absent), ``warn``, ``fail`` or ``pass``."""
    level: str
    text: str

    def as_html(self) -> str:
        return f'<div class="notice {html.escape(self.level)}"><b>{self.level.upper()}:</b> {html.escape(self.text)}</div>'

    def as_markdown(self) -> str:
        return f"> **{self.level.upper()}:** {_md_text(self.text)}"


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    subsections: list["Section"] = field(default_factory=list)
    anchor: str = ""

    def add(self, *blocks: Block) -> "Section":
        self.blocks.extend(blocks)
        return self

    def sub(self, title: str) -> "Section":
        child = Section(title)
        self.subsections.append(child)
        return child


FILL_MARK = "TO FILL"  # the marker a reviewer searches for; every FillIn carries it in both renderings


def cell_text(value: Any) -> str:
    """Numbers to 4 decimals (3 significant places are not enough for a 0.001 margin), None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        # A learning rate of 3e-5 must not print as 0.0000.
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def walk(sections: list[Section], depth: int = 2):
    for section in sections:
        yield section, depth
        yield from walk(section.subsections, depth + 1)


def anchors(sections: list[Section]) -> None:
    for i, (section, _) in enumerate(walk(sections)):
        section.anchor = section.anchor or f"s{i}"


# ---- HTML ----------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; color: #1d232b; background: #fff;
       max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 21px; border-bottom: 2px solid #d8dee6; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 17px; margin-top: 24px; } h4 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13.5px; max-width: 100%; }
td.long { overflow-wrap: anywhere; min-width: 12em; }
th, td { border: 1px solid #cfd6de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.fields th { width: 260px; font-weight: 600; }
caption { caption-side: top; text-align: left; font-size: 13px; color: #4a5561; padding-bottom: 4px; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 12.5px; }
pre { background: #f5f7f9; border: 1px solid #dde3ea; padding: 8px 10px; white-space: pre-wrap; word-break: break-all; }
figure { display: inline-block; vertical-align: top; margin: 12px 12px 20px 0; max-width: calc(50% - 14px); } figure img { max-width: 100%; border: 1px solid #e3e8ee; }
figcaption { font-size: 13px; color: #4a5561; }
.fill { background: #fff6d6; border: 2px dashed #d9a400; padding: 8px 12px; margin: 10px 0; }
.fill b { color: #8a5a00; }
.notice { padding: 8px 12px; margin: 10px 0; border-left: 6px solid; }
.missing { background: #f3f0ff; border-color: #6f55d9; } .warn { background: #fff4e5; border-color: #e08a00; }
.fail { background: #fdecec; border-color: #d33; } .pass { background: #eaf7ee; border-color: #2a9d4b; }
nav ol { columns: 2; font-size: 14px; } .subtitle { color: #4a5561; margin-top: 0; }
"""


def _html_cell(value: Any) -> str:
    raw = cell_text(value)
    text = html.escape(raw)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{text}</td>'
    # Hashes and paths may break anywhere; ordinary words must not (a narrow column would split them).
    return f'<td class="long">{text}</td>' if any(len(token) > 32 for token in raw.split()) else f"<td>{text}</td>"


def to_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """One self-contained page: inline CSS, images as data URIs, no script, no external URL."""
    anchors(sections)
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    parts = []
    for section, depth in walk(sections):
        level = min(depth, 4)
        parts.append(f'<h{level} id="{section.anchor}">{html.escape(section.title)}</h{level}>')
        parts.extend(b.as_html() for b in section.blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            # No network, no script: the page must render the same offline, years later, in a review archive.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"subtitle\">{html.escape(subtitle)}</p>"
            f"<nav><ol>{toc}</ol></nav>" + "\n".join(parts) + "</body></html>\n")


# ---- Markdown ------------------------------------------------------------------------------------------

def _md_text(text: str) -> str:
    # Escape what would turn plain text into markup (emphasis, links, HTML, tables). Underscores stay: inside
    # words (macro_f1) they are not emphasis in GitHub/CommonMark Markdown.
    for ch in "\\`*[]<>|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def _md_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_text(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_text(cell_text(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(title: str, subtitle: str, sections: list[Section], front_matter: str = "") -> str:
    """Markdown (GitHub/Hugging Face flavour); figures are referenced as files in figures/ beside it."""
    parts = [front_matter.rstrip("\n")] if front_matter else []
    parts += [f"# {_md_text(title)}", _md_text(subtitle)]
    for section, depth in walk(sections):
        parts.append("#" * min(depth, 4) + " " + _md_text(section.title))
        parts.extend(b.as_markdown() for b in section.blocks)
    return "\n\n".join(parts) + "\n"


def figures(sections: list[Section]) -> dict[str, bytes]:
    """name -> PNG bytes of every figure, for the Markdown version's figures/ folder."""
    return {b.name: b.png for s, _ in walk(sections) for b in s.blocks if isinstance(b, Figure)}
