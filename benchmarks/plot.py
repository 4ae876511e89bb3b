"""A small SVG bar chart for benchmark pages (no plotting library: the figures are few)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

COLOURS = ("#d62728", "#7f7f7f", "#bcbd22", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")
PANEL_W, PANEL_H, TOP, BOTTOM, LEFT = 300, 190, 40, 40, 50


def grouped_bars(path: Path, title: str, panels: Mapping[str, Mapping[str, Sequence[float]]],
                 groups: Sequence[str], series: Sequence[str]) -> None:
    """One panel per measure; in each, a group of bars per ``groups`` entry (e.g. a load), one
    bar per ``series`` entry (e.g. a router). ``panels[measure][series]`` lists the values in
    the order of ``groups``. A panel's scale stops at four times its median value, so that one
    huge bar does not flatten the rest: a bar past it is cut, with its value written on it."""
    width = LEFT + len(panels) * (PANEL_W + 20)
    height = TOP + PANEL_H + BOTTOM + 20 * ((len(series) + 2) // 3)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
           f'{escape(title)}</text>']
    for index, (measure, values) in enumerate(panels.items()):
        x0 = LEFT + index * (PANEL_W + 20)
        every = sorted(v for row in values.values() for v in row)
        top = min(every[-1], 4 * every[len(every) // 2]) if every else 1.0
        top = top or 1.0
        out.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 6}" text-anchor="middle">'
                   f'{escape(measure)}</text>')
        out.append(f'<line x1="{x0}" y1="{TOP + PANEL_H}" x2="{x0 + PANEL_W}" '
                   f'y2="{TOP + PANEL_H}" stroke="black"/>')
        out.append(f'<text x="{x0 - 4}" y="{TOP + 4}" text-anchor="end">{top:.3g}</text>')
        slot = PANEL_W / len(groups)
        bar = (slot - 16) / len(series)
        for g, group in enumerate(groups):
            out.append(f'<text x="{x0 + g * slot + slot / 2}" y="{TOP + PANEL_H + 14}" '
                       f'text-anchor="middle">{escape(group)}</text>')
            for s, name in enumerate(series):
                value = values.get(name, ())[g] if g < len(values.get(name, ())) else 0.0
                h = PANEL_H * min(value, top) / top
                x = x0 + g * slot + 8 + s * bar
                if value > top:
                    out.append(f'<text x="{x + bar / 2:.1f}" y="{TOP + 12}" font-size="9" '
                               f'text-anchor="middle" writing-mode="tb">{value:.0f}</text>')
                out.append(f'<rect x="{x:.1f}" y="{TOP + PANEL_H - h:.1f}" width="{bar - 1:.1f}" '
                           f'height="{h:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                           f'<title>{escape(name)} {escape(group)}: {value:g}</title></rect>')
    legend_y = TOP + PANEL_H + BOTTOM
    for s, name in enumerate(series):
        x, y = LEFT + (s % 3) * 200, legend_y + 20 * (s // 3)
        out.append(f'<rect x="{x}" y="{y - 9}" width="12" height="12" '
                   f'fill="{COLOURS[s % len(COLOURS)]}"/>')
        out.append(f'<text x="{x + 16}" y="{y + 1}">{escape(name)}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
