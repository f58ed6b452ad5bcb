"""ToyWorld pictures: each scene drawn as a real image, its objects by shape, colour and size
in the boxes its detections give them, on a plain background.

    pictures = Pictures("runs/multitask/toyworld_demo_0")   # a corpus written on disk
    pictures("00002201").save("scene.png")                   # PIL image, 640x480
    png_bytes(render(scene, boxes))                          # a scene and its object boxes

The picture is a function of the scene and its boxes only, which are a function of the corpus
seed and the image id (`corpus.image_detections`); PNG bytes carry no timestamp or other
metadata, so the same seed gives byte-identical files. Clutter boxes (the detector's weak false
positives) are not drawn: they show nothing.
"""

from __future__ import annotations

import base64
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import scenes

BACKGROUND = (200, 216, 232)  # a pale blue none of the eight colours comes near
OUTLINE = (45, 45, 45)
RGB = {"red": (204, 36, 36), "blue": (36, 84, 204), "green": (40, 156, 64), "yellow": (240, 208, 36),
       "black": (16, 16, 16), "white": (252, 252, 252), "brown": (128, 78, 36), "grey": (128, 128, 128)}
RING_HOLE = 0.45  # a ring's hole, as a fraction of its box (its centre shows the background)


def _shade(rgb, factor: float) -> tuple:
    return tuple(int(round(c * factor)) for c in rgb)


def _triangle(x1, y1, x2, y2) -> list:
    return [((x1 + x2) / 2, y1), (x2, y2), (x1, y2)]


def _star(x1, y1, x2, y2) -> list:
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    points = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * rx * math.cos(angle), cy + r * ry * math.sin(angle)))
    return points


def _egg(x1, y1, x2, y2, n: int = 48) -> list:
    """An egg outline: an ellipse whose upper half narrows (width 0.8 at the top, 1.0 below)."""
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    ts = [2 * math.pi * k / n for k in range(n)]
    return [(cx + rx * math.cos(t) * (0.9 + 0.1 * math.sin(t)), cy + ry * math.sin(t)) for t in ts]


def _draw_object(draw: ImageDraw.ImageDraw, obj: scenes.Obj, box) -> None:
    """One object filling its box; the box centre always shows the object's colour, except in
    a ring, whose centre is its hole."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    fill = RGB[obj.colour]
    dark = _shade(fill, 0.7)
    shape = obj.shape
    if shape == "cube":
        draw.rectangle([x1, y1, x2, y2], fill=fill, outline=OUTLINE, width=2)
        draw.line([(x1, y1 + 0.18 * h), (x2, y1 + 0.18 * h)], fill=dark, width=2)  # the top face's edge
    elif shape == "ball":
        draw.ellipse([x1, y1, x2, y2], fill=fill, outline=OUTLINE, width=2)
    elif shape == "egg":
        draw.polygon(_egg(x1, y1, x2, y2), fill=fill, outline=OUTLINE, width=2)
    elif shape == "ring":
        draw.ellipse([x1, y1, x2, y2], fill=fill, outline=OUTLINE, width=2)
        mx, my = (1 - RING_HOLE) * w / 2, (1 - RING_HOLE) * h / 2
        draw.ellipse([x1 + mx, y1 + my, x2 - mx, y2 - my], fill=BACKGROUND, outline=OUTLINE, width=2)
    elif shape == "cylinder":
        e = 0.22 * h  # the height of its top and bottom ellipses
        draw.ellipse([x1, y2 - e, x2, y2], fill=fill, outline=OUTLINE, width=2)
        draw.rectangle([x1, y1 + e / 2, x2, y2 - e / 2], fill=fill)
        draw.line([(x1, y1 + e / 2), (x1, y2 - e / 2)], fill=OUTLINE, width=2)
        draw.line([(x2, y1 + e / 2), (x2, y2 - e / 2)], fill=OUTLINE, width=2)
        draw.ellipse([x1, y1, x2, y1 + e], fill=_shade(fill, 0.85), outline=OUTLINE, width=2)
    elif shape == "cone":
        e = 0.2 * h
        draw.ellipse([x1, y2 - e, x2, y2], fill=fill, outline=OUTLINE, width=2)
        draw.polygon(_triangle(x1, y1, x2, y2 - e / 2), fill=fill, outline=OUTLINE)
    elif shape in ("pyramid", "triangle"):
        draw.polygon(_triangle(x1, y1, x2, y2), fill=fill, outline=OUTLINE, width=2)
        if shape == "pyramid":  # its shaded right face, clear of the centre
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1 + 0.7 * w, y2)], fill=dark, outline=OUTLINE)
    elif shape == "star":
        draw.polygon(_star(x1, y1, x2, y2), fill=fill, outline=OUTLINE, width=2)
    else:
        raise ValueError(f"no drawing for shape {shape!r}")


def render(scene, boxes, size: tuple[int, int] = (scenes.IMAGE_W, scenes.IMAGE_H)) -> Image.Image:
    """An RGB picture of `scene` (its `Obj`s) with object k in boxes[k] (x1, y1, x2, y2 pixels of
    a IMAGE_W x IMAGE_H image), scaled to `size`. Objects are drawn in scene order."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(scene):
        raise ValueError(f"{len(scene)} objects but {len(boxes)} boxes")
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = np.array([size[0] / scenes.IMAGE_W, size[1] / scenes.IMAGE_H] * 2)
    for obj, box in zip(scene, boxes):
        _draw_object(draw, obj, box * scale)
    return image


def object_boxes(det: dict) -> np.ndarray:
    """The boxes of a detection's scene objects, in scene order (clutter left out)."""
    return np.asarray(det["boxes"])[list(det["box_index"])]


def png_bytes(image: Image.Image) -> bytes:
    """PNG with no metadata chunks (no time, no text): equal pictures give equal bytes."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


class Pictures:
    """Image id (as the corpus and the feature store name it, e.g. "00000073") -> the picture of
    that image, for a ToyWorld corpus on disk: scenes from scenes_<split>.jsonl, boxes from the
    feature zips."""

    def __init__(self, root, size: tuple[int, int] = (scenes.IMAGE_W, scenes.IMAGE_H)):
        self.root, self.size = Path(root), size
        manifest = json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("name") != "ToyWorld":
            raise ValueError(f"{self.root}: not a ToyWorld corpus (its manifest names {manifest.get('name')!r})")
        self._entries = {}  # image id -> (scene, feature zip, member, box index of each object)
        for info in manifest["features"].values():
            for line in (self.root / info["scenes"]).read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                zip_name, member = record["frcnn"].split("@/")
                scene = tuple(scenes.Obj(o["shape"], o["colour"], o["size"], scenes.POSITIONS.index(o["position"]))
                              for o in record["objects"])
                self._entries[record["image"]] = (scene, zip_name, member, [o["box_index"] for o in record["objects"]])

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._entries

    def scene(self, image_id: str) -> tuple:
        return self._entries[image_id][0]

    def boxes(self, image_id: str) -> np.ndarray:
        """[objects, 4] pixel boxes of the image's objects, in scene order."""
        _, zip_name, member, index = self._entries[image_id]
        with zipfile.ZipFile(self.root / zip_name) as zf:
            record = json.loads(zf.read(member))
        boxes = np.frombuffer(base64.b64decode(record["boxes"]), dtype="<f4").reshape(-1, 4)
        return boxes[index]

    def __call__(self, image_id: str) -> Image.Image:
        if image_id not in self._entries:
            raise KeyError(f"image {image_id!r} is not in the ToyWorld corpus {self.root}")
        return render(self.scene(image_id), self.boxes(image_id), self.size)
