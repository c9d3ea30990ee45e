"""A small Markdown → self-contained HTML renderer for the structure ``hica report`` emits.

Supported: ATX headings, paragraphs, ``- `` bullet lists, pipe tables (``---:`` right-aligns), fenced
code blocks, ``>`` quotes, a lone ``![alt](file.png)`` line (embedded as a base64 data URI; the italic
line after it becomes the caption) and inline `code`, **bold** and *italic*. Anything else is
shown as escaped text. The page has inline CSS only and loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.5}
h1,h2,h3{line-height:1.25}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em}th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f3f3f3;padding:.05em .3em;border-radius:3px;font-size:.92em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;border-radius:4px}pre code{background:none;padding:0}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
blockquote{border-left:4px solid #ccc;margin:1em 0;padding:.1em 1em;color:#444}
"""

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")
_CAPTION = re.compile(r"^\*(?P<text>[^*].*)\*$")
_HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<text>.*)$")


def inline(text: str) -> str:
    """Escape ``text`` and render `code`, **bold** and *italic* spans."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def png_data_uri(path: Path) -> str:
    """The PNG at ``path`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head = _cells(lines[0])
    seps = _cells(lines[1]) if len(lines) > 1 and set(lines[1]) <= set("|-: ") else []
    body = lines[2:] if seps else lines[1:]
    align = [' class="r"' if s.endswith(":") else "" for s in seps] + [""] * len(head)
    out = ["<table>", "<thead><tr>"]
    out += [f"<th{align[i]}>{inline(c)}</th>" for i, c in enumerate(head)]
    out.append("</tr></thead>")
    out.append("<tbody>")
    for line in body:
        cells = _cells(line)
        out.append("<tr>" + "".join(f"<td{align[i]}>{inline(c)}</td>" for i, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def markdown_to_html(md: str, title: str, resolve_image: Callable[[str], str]) -> str:
    """Render ``md`` as a complete HTML page; ``resolve_image`` maps an image path to its ``src``."""
    lines = md.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            code = "\n".join(lines[i + 1 : j])
            body.append(f"<pre><code>{html.escape(code)}</code></pre>")
            i = j + 1
        elif m := _HEADING.match(stripped):
            n = len(m["level"])
            body.append(f"<h{n}>{inline(m['text'])}</h{n}>")
            i += 1
        elif m := _IMAGE.match(stripped):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            cap = _CAPTION.match(lines[j].strip()) if j < len(lines) else None
            src = html.escape(resolve_image(m["src"]))
            fig = f'<figure><img src="{src}" alt="{html.escape(m["alt"])}">'
            if cap:
                fig += f"<figcaption>{inline(cap['text'])}</figcaption>"
            body.append(fig + "</figure>")
            i = j + 1 if cap else i + 1
        elif stripped.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            body.append(_table([x.strip() for x in lines[i:j]]))
            i = j
        elif stripped.startswith("- "):
            j = i
            items = []
            while j < len(lines) and lines[j].strip().startswith("- "):
                items.append(f"<li>{inline(lines[j].strip()[2:])}</li>")
                j += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            i = j
        elif stripped.startswith(">"):
            j = i
            quote = []
            while j < len(lines) and lines[j].strip().startswith(">"):
                quote.append(lines[j].strip()[1:].strip())
                j += 1
            body.append(f"<blockquote><p>{inline(' '.join(quote))}</p></blockquote>")
            i = j
        else:
            j = i
            para = []
            while j < len(lines) and lines[j].strip() and not _starts_block(lines[j].strip()):
                para.append(lines[j].strip())
                j += 1
            body.append(f"<p>{inline(' '.join(para))}</p>")
            i = j
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _starts_block(s: str) -> bool:
    return bool(s.startswith(("```", "|", "- ", ">")) or _HEADING.match(s) or _IMAGE.match(s))
