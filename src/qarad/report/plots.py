"""Line plots as inline SVG: curves stay sharp at any zoom and the report needs no plotting library."""
from __future__ import annotations

import html

WIDTH, HEIGHT, PAD = 300, 240, 36
COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _xy(x: float, y: float, x_max: float) -> tuple[float, float]:
    return PAD + x / x_max * (WIDTH - PAD - 8), HEIGHT - PAD - y * (HEIGHT - PAD - 8)


def line_plot(title: str, series: dict[str, list[list[float]]], x_label: str, y_label: str,
              x_max: float = 1.0) -> str:
    """`series`: legend name -> [[x, y], ...] with x in [0, x_max] and y in [0, 1]."""
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
             f"viewBox='0 0 {WIDTH} {HEIGHT}' font-size='11' font-family='sans-serif'>",
             f"<text x='{WIDTH / 2}' y='12' text-anchor='middle' font-weight='bold'>{html.escape(title)}</text>"]
    x0, y0 = _xy(0, 0, x_max)
    x1, y1 = _xy(x_max, 1, x_max)
    parts.append(f"<rect x='{x0}' y='{y1}' width='{x1 - x0}' height='{y0 - y1}' fill='none' stroke='#999'/>")
    for t in (0.0, 0.5, 1.0):
        xt, _ = _xy(t * x_max, 0, x_max)
        _, yt = _xy(0, t, x_max)
        parts.append(f"<text x='{xt}' y='{y0 + 12}' text-anchor='middle'>{t * x_max:g}</text>")
        parts.append(f"<text x='{x0 - 4}' y='{yt + 4}' text-anchor='end'>{t:g}</text>")
    parts.append(f"<text x='{(x0 + x1) / 2}' y='{HEIGHT - 4}' text-anchor='middle'>{html.escape(x_label)}</text>")
    parts.append(f"<text x='10' y='{(y0 + y1) / 2}' text-anchor='middle' "
                 f"transform='rotate(-90 10 {(y0 + y1) / 2})'>{html.escape(y_label)}</text>")
    for k, (name, points) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        path = " ".join("{:.1f},{:.1f}".format(*_xy(x, y, x_max)) for x, y in points)
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.6' points='{path}'/>")
        parts.append(f"<text x='{x1 - 4}' y='{y0 - 8 - 13 * k}' text-anchor='end' fill='{colour}'>"
                     f"{html.escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)
