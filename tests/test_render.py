"""ToyWorld pictures: byte-identical PNGs for the same seed, each object's colour at its box
centre (a ring's on its band), the background everywhere away from the objects."""

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from bertgen_jax import toyworld
from bertgen_jax.toyworld import scenes
from bertgen_jax.toyworld.render import BACKGROUND, RGB, Pictures, object_boxes, png_bytes, render

DIM = 32


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        root = tmp_path_factory.mktemp(f"tw_{name}")
        toyworld.generate(root, seed=seed, scale="tiny", feature_dim=DIM, progress=False)
        out[name] = root
    return out


def split_ids(root, split="test"):
    return [json.loads(line)["image"] for line in (root / f"scenes_{split}.jsonl").read_text().splitlines()]


def png_chunks(data: bytes) -> list:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.append(kind.decode())
        at += 12 + length
    return chunks


def test_same_seed_gives_byte_identical_pngs_and_no_metadata(corpora):
    a, b, other = Pictures(corpora["a"]), Pictures(corpora["b"]), Pictures(corpora["other"])
    ids = split_ids(corpora["a"])[:3]
    for image_id in ids:
        data = png_bytes(a(image_id))
        assert data == png_bytes(b(image_id)) == png_bytes(a(image_id))
        assert data != png_bytes(other(image_id))  # another seed, another scene
        assert set(png_chunks(data)) == {"IHDR", "IDAT", "IEND"}  # no time, text or size chunks
        # The boxes on disk are those the seed gives: rendering from the seed alone agrees.
        det = toyworld.image_detections(0, int(image_id), a.scene(image_id), DIM)
        assert png_bytes(render(a.scene(image_id), object_boxes(det))) == data


def probe(obj, box):
    """A pixel inside the drawn shape: its box centre, or for a ring a point on its band."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if obj.shape == "ring":
        cx += 0.72 * (x2 - x1) / 2
    return int(round(cx)), int(round(cy))


def test_objects_show_their_colour_and_the_background_is_elsewhere(corpora):
    pictures = Pictures(corpora["a"])
    manifest = json.loads((corpora["a"] / "manifest.json").read_text())
    checked_shapes = set()
    for image_id in split_ids(corpora["a"]) + split_ids(corpora["a"], "val"):
        image = pictures(image_id)
        assert image.size == tuple(manifest["image_size"]) == (640, 480) and image.mode == "RGB"
        pixels = np.asarray(image)
        boxes = pictures.boxes(image_id)
        for obj, box in zip(pictures.scene(image_id), boxes):
            x, y = probe(obj, box)
            assert tuple(pixels[y, x]) == RGB[obj.colour], (image_id, obj)
            checked_shapes.add(obj.shape)
        # Every point of a 16-pixel grid at least 3 pixels away from all object boxes is background.
        ys, xs = np.mgrid[0:480:16, 0:640:16]
        away = np.ones(xs.shape, bool)
        for x1, y1, x2, y2 in boxes:
            away &= ~((xs >= x1 - 3) & (xs <= x2 + 3) & (ys >= y1 - 3) & (ys <= y2 + 3))
        assert away.sum() > 500
        assert (pixels[ys[away], xs[away]] == BACKGROUND).all()
    assert len(checked_shapes) >= 6  # the 24 tiny test/val scenes show most shapes


def test_every_shape_and_colour_at_its_centre_and_a_smaller_size():
    objs = [scenes.Obj(shape, colour, "large", cell)
            for cell, (shape, colour) in enumerate(zip(scenes.SHAPES, scenes.COLOURS + ("red",)))]
    boxes = [[(c % 3) * 640 / 3 + 20, (c // 3) * 160 + 10, (c % 3 + 1) * 640 / 3 - 20, (c // 3 + 1) * 160 - 10]
             for c in range(9)]
    pixels = np.asarray(render(objs, boxes))
    for obj, box in zip(objs, boxes):
        x, y = probe(obj, box)
        assert tuple(pixels[y, x]) == RGB[obj.colour], obj
    ring = scenes.SHAPES.index("ring")
    cx, cy = ((boxes[ring][0] + boxes[ring][2]) / 2, (boxes[ring][1] + boxes[ring][3]) / 2)
    assert tuple(pixels[int(cy), int(cx)]) == BACKGROUND  # a ring's hole
    half = render(objs, boxes, size=(320, 240))
    assert half.size == (320, 240)
    assert tuple(np.asarray(half)[40, 53]) == RGB[objs[0].colour]
    assert Image.open(io.BytesIO(png_bytes(half))).size == (320, 240)


def test_bad_input_is_one_clear_error(corpora, tmp_path):
    pictures = Pictures(corpora["a"])
    with pytest.raises(KeyError, match="'99999999' is not in the ToyWorld corpus"):
        pictures("99999999")
    with pytest.raises(ValueError, match="2 objects but 1 boxes"):
        render(pictures.scene(split_ids(corpora["a"])[0])[:1] * 2, [[0, 0, 10, 10]])
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "real", "streams": []}))
    with pytest.raises(ValueError, match="not a ToyWorld corpus"):
        Pictures(tmp_path)
