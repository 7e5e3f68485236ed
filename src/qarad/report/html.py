"""A self-contained static HTML report: images are embedded as PNG data URIs, plots as inline SVG,
so one file opens anywhere without a network."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..data.io import to_uint8, write_text

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.best{font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{width:220px;font-size:12px}
.card img{width:220px;height:auto;display:block;border:1px solid #ddd}
"""


def png_data_uri(image: np.ndarray, max_side: int = 320) -> str:
    img = Image.fromarray(to_uint8(image) if image.dtype != np.uint8 else image)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Report:
    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list], bold_max_from: int | None = None) -> None:
        """Numbers are shown with 3 decimals; with `bold_max_from`, the best value per column is bold."""
        best = {}
        if bold_max_from is not None:
            for c in range(bold_max_from, len(header)):
                vals = [r[c] for r in rows if isinstance(r[c], float) and np.isfinite(r[c])]
                best[c] = max(vals) if vals else None
        out = ["<table><tr>" + "".join(f"<th class={'l' if i == 0 else 'r'}>{html.escape(h)}</th>"
                                       for i, h in enumerate(header)) + "</tr>"]
        for r in rows:
            cells = []
            for c, v in enumerate(r):
                text = f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
                cls = "l" if isinstance(v, str) else ("best" if best.get(c) is not None and v == best[c] else "")
                cells.append(f"<td class='{cls}'>{text}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append("\n".join(out) + "</table>")

    def gallery(self, cards: list[tuple[np.ndarray, str]], max_side: int = 320) -> None:
        items = "".join(f"<div class=card><img src='{png_data_uri(img, max_side)}'><div>{html.escape(cap)}</div></div>"
                        for img, cap in cards)
        self.parts.append(f"<div class=gallery>{items}</div>")

    def raw(self, markup: str) -> None:
        """Markup made by this package (e.g. inline SVG plots); never pass user text here unescaped."""
        self.parts.append(markup)

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class=sub>{html.escape(self.subtitle)}</p>{body}</body></html>\n")

    def write(self, path) -> None:
        """Render and write atomically (a temporary file renamed onto `path`)."""
        write_text(path, self.render())
