"""ToyWorld scenes and the detector output ("RoI sets") a real image of them would give.

A scene is 1-4 objects, each with a shape, colour, size and a cell of a 3x3 grid over a
640x480 image. Its detections look like bottom-up-attention Faster R-CNN output: pixel
boxes in confidence order, one appearance vector per box, soft class scores, plus a
few low-confidence clutter boxes. The whole-image box is NOT included: the data
pipeline prepends it, as it does for the original's feature files.
"""

import base64
import json
from dataclasses import dataclass

import numpy as np

SHAPES = ("cube", "ball", "cone", "cylinder", "pyramid", "ring", "star", "triangle", "egg")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "grey")
SIZES = ("small", "large")
# Detector class 0 is background, as in the 1601-class Visual Genome detector.
CLASSES = ("__background__",) + SHAPES
# Cell index = 3 * row + column, row 0 at the top.
POSITIONS = ("top_left", "top", "top_right", "left", "middle", "right", "bottom_left", "bottom", "bottom_right")

IMAGE_W, IMAGE_H = 640, 480
GRID = 3
MAX_OBJECTS = 4
MAX_CLUTTER = 2

# Width/height ratio of each shape's box, so box geometry hints at the shape too.
ASPECT = {"cube": 1.0, "ball": 1.0, "cone": 0.75, "cylinder": 0.6, "pyramid": 1.25,
          "ring": 1.4, "star": 1.0, "triangle": 1.15, "egg": 0.75}
# Box side as a fraction of a cell's height: small and large never overlap in range.
SIDE = {"small": (0.30, 0.42), "large": (0.72, 0.90)}

# One-hot layout of an RoI's hidden attributes: shape | colour | size | clutter flag.
ATTR_DIM = len(SHAPES) + len(COLOURS) + len(SIZES) + 1
FEATURE_NOISE = 0.1
# Fixed, not the corpus seed: every ToyWorld corpus is "seen" by the same detector, so a
# model trained on one seed's corpus reads another's features.
PROJECTION_SEED = 20210607


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def row_col(self) -> tuple:
        return divmod(self.cell, GRID)


def sample_scene(rng: np.random.Generator) -> tuple:
    """Objects in reading order (cell order), which is also the order captions use.
    No two objects look alike, so every full description names exactly one object."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n, replace=False))
    kinds = rng.choice(len(SHAPES) * len(COLOURS) * len(SIZES), size=n, replace=False)
    objs = []
    for cell, kind in zip(cells, kinds):
        shape, rest = divmod(int(kind), len(COLOURS) * len(SIZES))
        colour, size = divmod(rest, len(SIZES))
        objs.append(Obj(SHAPES[shape], COLOURS[colour], SIZES[size], cell))
    return tuple(objs)


def scene_key(scene: tuple) -> tuple:
    return tuple((o.cell, o.shape, o.colour, o.size) for o in scene)


def projection(feature_dim: int) -> np.ndarray:
    """The detector's fixed map from attribute one-hots to appearance vectors, [ATTR_DIM, D]."""
    rng = np.random.default_rng(PROJECTION_SEED)
    return rng.standard_normal((ATTR_DIM, feature_dim)).astype(np.float32)


def attribute_onehot(obj: Obj | None) -> np.ndarray:
    """[ATTR_DIM]; None is a clutter box."""
    v = np.zeros(ATTR_DIM, np.float32)
    if obj is None:
        v[-1] = 1.0
        return v
    v[SHAPES.index(obj.shape)] = 1.0
    v[len(SHAPES) + COLOURS.index(obj.colour)] = 1.0
    v[len(SHAPES) + len(COLOURS) + SIZES.index(obj.size)] = 1.0
    return v


def _object_box(obj: Obj, rng: np.random.Generator) -> list:
    cw, ch = IMAGE_W / GRID, IMAGE_H / GRID
    row, col = obj.row_col
    # Jitter stays small enough that a box centre never leaves its cell.
    cx = (col + 0.5 + rng.uniform(-0.15, 0.15)) * cw
    cy = (row + 0.5 + rng.uniform(-0.15, 0.15)) * ch
    side = rng.uniform(*SIDE[obj.size]) * ch
    w, h = side * np.sqrt(ASPECT[obj.shape]), side / np.sqrt(ASPECT[obj.shape])
    return [max(cx - w / 2, 0.0), max(cy - h / 2, 0.0), min(cx + w / 2, IMAGE_W - 1.0), min(cy + h / 2, IMAGE_H - 1.0)]


def _clutter_box(rng: np.random.Generator) -> list:
    w, h = rng.uniform(20, 200), rng.uniform(20, 160)
    x, y = rng.uniform(0, IMAGE_W - 1 - w), rng.uniform(0, IMAGE_H - 1 - h)
    return [x, y, x + w, y + h]


def detect(scene: tuple, rng: np.random.Generator, proj: np.ndarray) -> dict:
    """Detector output for a scene: boxes [N,4], features [N,D], classes [N,C] (float32)
    in descending confidence, and box_index: the row of each scene object, in scene order."""
    n_clutter = int(rng.integers(0, MAX_CLUTTER + 1))
    items = list(scene) + [None] * n_clutter
    # Clutter always scores below real objects, as weak detections do.
    conf = np.concatenate([rng.uniform(0.55, 0.99, len(scene)), rng.uniform(0.05, 0.45, n_clutter)])
    boxes = [_object_box(o, rng) if o is not None else _clutter_box(rng) for o in items]
    onehots = np.stack([attribute_onehot(o) for o in items])
    features = onehots @ proj + FEATURE_NOISE * rng.standard_normal((len(items), proj.shape[1]))
    # Soft scores: the box's own class gets its confidence, the rest is spread at random.
    classes = rng.dirichlet(np.ones(len(CLASSES)), len(items)) * (1.0 - conf)[:, None]
    for i, o in enumerate(items):
        classes[i, 0 if o is None else CLASSES.index(o.shape)] += conf[i]
    order = np.argsort(-conf, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return {
        "boxes": np.asarray(boxes, np.float32)[order],
        "features": features.astype(np.float32)[order],
        "classes": classes.astype(np.float32)[order],
        "box_index": tuple(int(r) for r in rank[: len(scene)]),
    }


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def feature_json(image_id: int, det: dict) -> bytes:
    """One image's entry in a *_frcnn.zip, in the original's field names and encoding."""
    record = {
        "image_id": image_id,
        "image_w": IMAGE_W,
        "image_h": IMAGE_H,
        "num_boxes": len(det["boxes"]),
        "boxes": _b64(det["boxes"]),
        "features": _b64(det["features"]),
        "classes": _b64(det["classes"]),
    }
    return json.dumps(record).encode("utf-8")
