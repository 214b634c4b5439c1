#!/usr/bin/env python3
"""Places SVG figures side by side in one SVG, each under a caption.

    python3 docs/figures/side_by_side.py OUT.svg "caption A" a.svg "caption B" b.svg ...

Each figure keeps its own size and coordinates (it is nested as an <svg> element at its
offset); the combined figure is as wide as the figures together and as tall as the tallest
plus the caption line.
"""
import re
import sys

CAPTION = 28  # height of the caption line, px


def size(svg):
    """The width and height the root <svg> element declares."""
    root = re.search(r"<svg\b[^>]*>", svg).group(0)
    number = lambda name: float(re.search(name + r'="([0-9.]+)"', root).group(1))
    return number("width"), number("height")


def main(out, pairs):
    parts, x, height = [], 0.0, 0.0
    for caption, path in pairs:
        svg = open(path, encoding="utf-8").read()
        w, h = size(svg)
        body = re.sub(r"<svg\b", f'<svg x="{x:.1f}" y="{CAPTION}"', svg, count=1)
        parts.append(
            f'<text x="{x + w / 2:.1f}" y="{CAPTION - 8}" text-anchor="middle" '
            f'font-size="17" font-weight="bold">{caption}</text>\n{body}'
        )
        x, height = x + w, max(height, h)
    total = height + CAPTION
    with open(out, "w", encoding="utf-8") as f:
        f.write(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{x:.1f}" height="{total:.1f}" '
            f'viewBox="0 0 {x:.1f} {total:.1f}" font-family="DejaVu Sans, Helvetica, Arial, '
            f'sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
        )
        f.write("\n".join(parts))
        f.write("\n</svg>\n")


if __name__ == "__main__":
    args = sys.argv[2:]
    if len(sys.argv) < 4 or len(args) % 2:
        sys.exit(__doc__)
    main(sys.argv[1], list(zip(args[0::2], args[1::2])))
