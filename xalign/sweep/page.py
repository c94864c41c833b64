"""One self-contained HTML page: headings, paragraphs, tables and PNG figures inlined as
base64 data, so the file can be mailed, attached to a run, or opened from any folder."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional, Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td { white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; } img { max-width: 100%; }
.note { color: #666; font-size: 0.9em; } pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
"""


class Page:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, *, note: bool = False) -> None:
        opening = '<p class="note">' if note else "<p>"
        self.parts.append(f"{opening}{html.escape(text)}</p>")

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], *, caption: str = "") -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, png: Optional[Path], caption: str) -> None:
        """A PNG inlined; a missing file leaves a line saying so."""
        if png is None or not Path(png).is_file():
            self.text(f"({caption}: not available)", note=True)
            return
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                        f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
                        f"<body><h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n",
                        encoding="utf-8")
        return path
