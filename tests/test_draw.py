"""generate --draw: region boxes scaled to the user's picture and the output beneath it, one PNG
per input; a missing or unreadable picture, or a bad flag, is one line and writes nothing."""

import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from bertgen_jax import draw, generate, toyworld
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.model import BertGen, ModelConfig

CFG = ModelConfig(vocab_size=1400, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=32,
                  feature_dim=32, visual_ln_init=1.0)
GREY = (90, 90, 90)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny corpus's feature store, an exported random model, and the user's pictures of two
    test images at sizes other than the store's 640x480."""
    root = tmp_path_factory.mktemp("toyworld")
    manifest = toyworld.generate(str(root), seed=0, scale="tiny", feature_dim=32, progress=False)
    files = sorted({str(root / s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations(files, str(root / "store"), progress=False)
    generate.Generator(BertGen(CFG, nnx.Rngs(0)), str(root / "vocab.txt"), store).export(str(root / "model"))
    pictures = root / "pictures"
    pictures.mkdir()
    Image.new("RGB", (320, 240), GREY).save(pictures / "00000073.jpg", quality=100)
    Image.new("RGB", (1280, 960), GREY).save(pictures / "00000074.png")
    (root / "sources.txt").write_text("a small red ball\n")
    return root, store


def cli(root, *extra):
    return ["--model", str(root / "model"), "--features", str(root / "store"), "--task", "caption",
            "--lang", "en", "--max-len", "3", *extra]


def test_boxes_scaled_to_each_picture_and_the_caption_beneath(world, tmp_path, capsys):
    root, store = world
    out = tmp_path / "drawn"
    code = generate.main(cli(root, "--images", "00000073", "00000074", "--output", str(tmp_path / "captions.txt"),
                             "--draw", str(out), "--image-dir", str(root / "pictures")))
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["0001_00000073.png", "0002_00000074.png"]
    captions = (tmp_path / "captions.txt").read_text().splitlines()
    for name, image_id, (w, h) in (("0001_00000073.png", "00000073", (320, 240)),
                                   ("0002_00000074.png", "00000074", (1280, 960))):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width == w and im.height > h  # the text band beneath
            pixels = np.asarray(im.convert("RGB")).astype(int)
        regions = store.get(image_id)
        sx, sy = w / regions.image_w, h / regions.image_h
        palette = {tuple(c) for c in draw.PALETTE}
        inside = np.zeros((h, w), bool)
        for x1, y1, x2, y2 in regions.boxes[1:]:  # the whole-image box is not drawn
            left, mid = int(round(x1 * sx)), int(round((y1 + y2) / 2 * sy))
            assert tuple(pixels[mid, left]) in palette, (name, x1, y1)
            inside[max(int(y1 * sy) - 3, 0):int(y2 * sy) + 4, max(int(x1 * sx) - 3, 0):int(x2 * sx) + 4] = True
        picture = pixels[:h]
        assert (np.abs(picture[~inside] - GREY) <= 2).all()  # the picture itself, untouched (JPEG: nearly)
        band = pixels[h:]
        assert (band == draw.PAPER).all(-1).mean() > 0.5 and (band < 100).all(-1).any()  # dark text on white
    assert captions and all(isinstance(c, str) for c in captions)


@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated"])
def test_a_missing_or_unreadable_picture_is_one_line_and_writes_nothing(world, tmp_path, capsys, case):
    root, _ = world
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (64, 48), GREY).save(pictures / "00000073.png")
    bad = pictures / "00000074.jpg"
    if case == "unreadable":
        bad.write_bytes(b"not a picture at all")
    elif case == "truncated":
        Image.new("RGB", (640, 480), GREY).save(pictures / "whole.png")
        bad = pictures / "00000074.png"
        bad.write_bytes((pictures / "whole.png").read_bytes()[:200])
    out, captions = tmp_path / "drawn", tmp_path / "captions.txt"
    code = generate.main(cli(root, "--images", "00000073", "00000074", "--output", str(captions),
                             "--draw", str(out), "--image-dir", str(pictures)))
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    if case == "missing":
        assert err.startswith(f"error: {pictures}/00000074[.jpg|.jpeg|.png]: no picture of image '00000074'")
    else:
        assert err.startswith(f"error: {bad}: not a readable picture (")
    assert not out.exists() and not captions.exists()


@pytest.mark.parametrize("flags", [["--draw", "OUT"], ["--image-dir", "DIR"],
                                   ["--draw", "OUT", "--image-dir", "DIR", "--task", "translate"]])
def test_draw_flags_without_their_partner_or_images_are_a_usage_error(world, tmp_path, capsys, flags):
    root, _ = world
    with pytest.raises(SystemExit) as exit_:
        generate.main(cli(root, "--input", str(root / "sources.txt"),
                          *[str(tmp_path / f) if f in ("OUT", "DIR") else f for f in flags]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.splitlines()[-1].endswith("--draw OUT_DIR and --image-dir DIR go together, with images: "
                                         "--task caption, or --images/--images-file for multimodal translation")
    assert os.listdir(tmp_path) == []
