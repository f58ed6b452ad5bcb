"""The results picture: BLEU per held-out set as grouped bars, the model's bar beside its
shuffled-image and copy-the-source rows (and any other decoder's), zero-shot sets marked.
Drawn with Pillow from the result rows `evaluate.evaluate_sets` returns; written after each
evaluation as `eval/results.png` and shown in TensorBoard as `eval/results`.
"""

from __future__ import annotations

import math
import os

from PIL import Image, ImageDraw, ImageFont

HEIGHT = 560
MIN_WIDTH = 1000
GROUP_WIDTH = 48  # pixels per set when there are more than fit in MIN_WIDTH
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 56, 170  # margins: y axis, -, title and legend, set names
BACKGROUND, INK, GRID, ZERO_SHOT = (255, 255, 255), (30, 30, 30), (222, 222, 222), (190, 30, 30)
# Bar colours by variant; variants not named here (other decoders) take OTHERS in turn.
COLOURS = {"model": (52, 101, 164), "shuffled images": (232, 140, 40), "copy source": (160, 160, 160)}
OTHERS = ((84, 160, 84), (150, 90, 170), (90, 170, 190))


def chart_size(rows: list[dict]) -> tuple[int, int]:
    """(width, height): MIN_WIDTH x HEIGHT, wider when there are many sets."""
    sets = len(dict.fromkeys(r["set"] for r in rows))
    return max(MIN_WIDTH, LEFT + RIGHT + GROUP_WIDTH * sets), HEIGHT


def _variants(rows) -> dict:
    """Variant -> bar colour, in the order rows first show them."""
    out, others = {}, iter(OTHERS * 4)
    for r in rows:
        if r["variant"] not in out:
            out[r["variant"]] = COLOURS.get(r["variant"]) or next(others, INK)
    return out


def _vertical_text(image: Image.Image, xy, text: str, fill, font) -> None:
    """`text` rotated to read bottom to top, its top end at xy (centred on x)."""
    left, top, right, bottom = font.getbbox(text)
    strip = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    ImageDraw.Draw(strip).text((-left + 1, -top + 1), text, fill=fill, font=font)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (int(xy[0] - strip.width / 2), int(xy[1])), strip)


def chart(rows: list[dict], step=None) -> Image.Image:
    """The chart of one evaluation's rows (dicts with set, variant, direction, zero_shot, bleu)."""
    width, height = chart_size(rows)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)  # Pillow's own font: no font files needed
    sets = list(dict.fromkeys(r["set"] for r in rows))
    variants = _variants(rows)
    bleu = {(r["set"], r["variant"]): float(r["bleu"] or 0.0) for r in rows}
    top = max([10.0] + list(bleu.values()))
    tick = 10 if top <= 50 else 20
    ymax = math.ceil(top / tick) * tick
    x0, x1, y0, y1 = LEFT, width - RIGHT, TOP, height - BOTTOM  # the plot area
    to_y = lambda v: y1 - (y1 - y0) * min(v, ymax) / ymax  # noqa: E731

    title = "BLEU per set" + (f" at step {step}" if step is not None else "")
    draw.text((x0, 8), title, fill=INK, font=font)
    lx = x0
    for variant, colour in list(variants.items()) + [("* zero-shot (never trained)", None)]:
        if colour is not None:
            draw.rectangle([lx, 30, lx + 12, 42], fill=colour)
            lx += 16
        draw.text((lx, 30), variant, fill=INK if colour else ZERO_SHOT, font=font)
        lx += int(font.getlength(variant)) + 20

    for k in range(int(ymax // tick) + 1):  # y grid and labels
        value = k * tick
        y = to_y(value)
        draw.line([(x0, y), (x1, y)], fill=GRID)
        label = f"{value:g}"
        draw.text((x0 - 6 - font.getlength(label), y - 7), label, fill=INK, font=font)
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=INK)

    group = (x1 - x0) / max(len(sets), 1)
    for g, name in enumerate(sets):
        present = [v for v in variants if (name, v) in bleu]
        bar = min(22.0, 0.8 * group / max(len(present), 1))
        start = x0 + g * group + (group - bar * len(present)) / 2
        for k, variant in enumerate(present):
            bx = start + k * bar
            value = bleu[(name, variant)]
            draw.rectangle([bx, to_y(value), bx + bar - 2, y1], fill=variants[variant])
            if variant == "model":
                text = f"{value:.1f}"
                draw.text((bx + bar / 2 - font.getlength(text) / 2, to_y(value) - 15), text, fill=INK, font=font)
        row = next(r for r in rows if r["set"] == name)
        zero_shot = bool(row.get("zero_shot"))
        label = f"{name} ({row.get('direction', '')})" + (" *" if zero_shot else "")
        _vertical_text(image, (x0 + (g + 0.5) * group, y1 + 6), label, ZERO_SHOT if zero_shot else INK, font)
    return image


def write(rows: list[dict], path: str, step=None) -> Image.Image:
    """Draw the chart and write it as a PNG at `path` (replaced whole); returns the picture."""
    image = chart(rows, step)
    tmp = path + ".tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return image
