"""Generated text and detector boxes drawn on your own pictures: `generate --draw OUT_DIR
--image-dir DIR` (real data; ToyWorld pictures are rendered by `toyworld.render` instead).

The picture of image id X is DIR/X if that file exists, else DIR/X.jpg, .jpeg or .png (either
case), e.g. Flickr30k's `flickr30k-images/` for ids like `1000092795`. Each input gives one PNG,
`OUT_DIR/<n>_<image id>.png` (n its 1-based position): the picture with the feature store's
region boxes (the whole-image box left out; scaled from the store's image size to the file's
actual size, numbered in confidence order) and the generated text in a band beneath it.
Every picture is found and decoded before anything is generated or written: a missing or
unreadable one is an error naming the file, and nothing is written.
"""

from __future__ import annotations

import os
import re

from PIL import Image, ImageDraw, ImageFont

SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))
INK, PAPER = (20, 20, 20), (255, 255, 255)


def image_file(image_dir: str, image_id: str) -> str:
    """The file showing `image_id` in `image_dir` (module docstring), or FileNotFoundError."""
    for name in (image_id, *(image_id + s for s in SUFFIXES)):
        path = os.path.join(image_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{os.path.join(image_dir, image_id)}[.jpg|.jpeg|.png]: no picture of image "
                            f"{image_id!r} in --image-dir {image_dir}")


def open_image(path: str) -> Image.Image:
    """The picture at `path`, decoded in full as RGB, or ValueError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable picture ({' '.join(str(err).split())})") from None


def check_pictures(image_dir: str, image_ids) -> list[tuple[str, str]]:
    """(image id, file) of every input, each file found and decoded once, so that a missing or
    unreadable picture stops the run before anything is written."""
    pairs = [(i, image_file(image_dir, i)) for i in image_ids]
    for path in dict.fromkeys(p for _, p in pairs):
        open_image(path)
    return pairs


def _wrap(text: str, font, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line or not lines else lines


def draw(picture: Image.Image, regions, text: str) -> Image.Image:
    """`picture` with the boxes of `regions` (a feature store's `Regions`, whole-image box first)
    scaled to its size and numbered, and `text` wrapped in a band beneath it."""
    if regions.image_w <= 0 or regions.image_h <= 0:
        raise ValueError(f"regions record an image size of {regions.image_w}x{regions.image_h}")
    w, h = picture.size
    sx, sy = w / regions.image_w, h / regions.image_h
    font = ImageFont.load_default(size=max(12, w // 45))
    pad, line_h = max(6, w // 100), font.size + 4
    lines = _wrap(text, font, w - 2 * pad)
    out = Image.new("RGB", (w, h + 2 * pad + line_h * len(lines)), PAPER)
    out.paste(picture, (0, 0))
    pen = ImageDraw.Draw(out)
    for k, (x1, y1, x2, y2) in enumerate(regions.boxes[1:]):
        colour = PALETTE[k % len(PALETTE)]
        box = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
        pen.rectangle(box, outline=colour, width=max(2, w // 320))
        label = str(k + 1)
        pen.rectangle([box[0], box[1], box[0] + font.getlength(label) + 6, box[1] + line_h], fill=colour)
        pen.text((box[0] + 3, box[1] + 1), label, fill=INK, font=font)
    for n, line in enumerate(lines):
        pen.text((pad, h + pad + n * line_h), line, fill=INK, font=font)
    return out


def file_name(n: int, image_id: str) -> str:
    return f"{n:04d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', image_id)}.png"


def draw_all(out_dir: str, pictures: list[tuple[str, str]], store, texts: list[str]) -> list[str]:
    """One PNG per input (`check_pictures`' pairs) in out_dir, with its generated text (texts in
    input order; k outputs per input, as sampling returns them, are drawn one after another);
    returns the paths written."""
    if not pictures or len(texts) % len(pictures):
        raise ValueError(f"{len(pictures)} pictures but {len(texts)} generated texts")
    per = len(texts) // len(pictures)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for n, (image_id, path) in enumerate(pictures, start=1):
        mine = texts[(n - 1) * per:n * per]
        text = mine[0] if per == 1 else "  ".join(f"({k}) {t}" for k, t in enumerate(mine, start=1))
        out = os.path.join(out_dir, file_name(n, image_id))
        draw(open_image(path), store.get(image_id), text).save(out, format="PNG")
        written.append(out)
    return written
