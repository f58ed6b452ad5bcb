"""Detector features decoded once into memory-mapped arrays, read by image index.

Decoding base64 features costs far more than training reads: the original decodes an
image's features again for every unrolled prefix of every caption. A store holds each
image's rows already decoded, with the whole-image box already put first, so the
training pipeline (grain, in several worker processes) only slices memory maps.

A store is a directory:
    features.npy   float32 [rows, D]     one row per box
    boxes.npy      float32 [rows, 4]     x1, y1, x2, y2 in pixels
    offsets.npy    int64   [images + 1]  image i owns rows offsets[i]:offsets[i+1]
    image_wh.npy   float32 [images, 2]   width, height
    ids.json       image ids in store order
    meta.json      feature_dim, count, rows, sources, skipped images, format version
Row offsets[i] is the whole-image box [0, 0, W-1, H-1] with the mean of all the
image's detector features (before any truncation, as the original); the detector's
boxes follow in the file's order, which is detector-confidence order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import tqdm

from bertgen_jax.data.records import DataError, Regions

FORMAT = "bertgen_jax feature store"
VERSION = 1
FILES = ("features.npy", "boxes.npy", "offsets.npy", "image_wh.npy", "ids.json", "meta.json")
PREPARE_HINT = "build it with `python -m bertgen_jax.data.prepare --out DIR ...`"

# A fixed header size lets the row count be written after the rows are streamed. 128
# bytes fit any 2-D shape, and a multiple of 64 keeps the data aligned for mmap.
_HEADER_BYTES = 128

log = logging.getLogger(__name__)


class FeatureStore:
    """Read-only view of a store directory; `get(i)` returns that image's `Regions`.

    Pickling keeps only the small in-memory tables; the memory maps are reopened on
    first read, so each grain worker maps the files itself.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DataError(self.path, None, None, "is not a feature store directory "
                            "(it does not exist)", PREPARE_HINT)
        for name in FILES:
            if not os.path.isfile(os.path.join(self.path, name)):
                raise DataError(os.path.join(self.path, name), None, None,
                                "is missing: this is not a complete feature store", PREPARE_HINT)
        self.meta = self._read_json("meta.json")
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise DataError(self._file("meta.json"), None, "version",
                            f"is format {self.meta.get('format')!r} version "
                            f"{self.meta.get('version')!r}, expected {FORMAT!r} version {VERSION}",
                            "rebuild the store: " + PREPARE_HINT)
        self.ids: list[str] = self._read_json("ids.json")
        self._index = {image_id: i for i, image_id in enumerate(self.ids)}
        self.offsets = np.load(self._file("offsets.npy"))  # [N + 1] int64
        self.image_wh = np.load(self._file("image_wh.npy"))  # [N, 2] float32
        self._features = self._boxes = None
        self._check_shapes()

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _read_json(self, name: str):
        try:
            with open(self._file(name), encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(self._file(name), None, None, f"is not valid JSON ({err})",
                            "rebuild the store: " + PREPARE_HINT) from None

    def _check_shapes(self) -> None:
        """Every table must agree with meta.json; a mismatch means a damaged store."""
        n, dim = self.meta["count"], self.meta["feature_dim"]
        features, boxes = self._arrays()
        rows = int(self.offsets[-1]) if len(self.offsets) else -1
        expected = {"ids.json": (len(self.ids), n), "offsets.npy": (self.offsets.shape, (n + 1,)),
                    "image_wh.npy": (self.image_wh.shape, (n, 2)),
                    "features.npy": (features.shape, (rows, dim)),
                    "boxes.npy": (boxes.shape, (rows, 4))}
        for name, (found, wanted) in expected.items():
            if found != wanted:
                raise DataError(self._file(name), None, None,
                                f"has shape/length {found}, expected {wanted} from meta.json",
                                "the store is damaged; rebuild it: " + PREPARE_HINT)
        if rows >= 0 and (self.offsets[0] != 0 or (np.diff(self.offsets) < 1).any()):
            raise DataError(self._file("offsets.npy"), None, None,
                            "must start at 0 and grow by at least one row per image",
                            "the store is damaged; rebuild it: " + PREPARE_HINT)
        if len(self._index) != n:
            raise DataError(self._file("ids.json"), None, None, "repeats an image id",
                            "rebuild the store: " + PREPARE_HINT)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._features is None:
            self._features = np.load(self._file("features.npy"), mmap_mode="r")
            self._boxes = np.load(self._file("boxes.npy"), mmap_mode="r")
        return self._features, self._boxes

    def __getstate__(self):
        # Memory maps do not pickle into a usable map; each copy maps the files again.
        return {**self.__dict__, "_features": None, "_boxes": None}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    @property
    def feature_dim(self) -> int:
        return self.meta["feature_dim"]

    @property
    def skipped_ids(self) -> list[str]:
        """Images of the sources that are not in the store (unusable features)."""
        return list(self.skipped_problems)

    @property
    def skipped_problems(self) -> dict[str, str]:
        """Skipped image id -> the problem that made prepare skip it."""
        return {entry["image_id"]: entry.get("problem", "") for entry in self.meta.get("skipped", [])}

    def index(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            skipped = " (it was skipped when the store was built)" \
                if image_id in self.skipped_ids else ""
            raise KeyError(f"image {image_id!r} is not in the feature store "
                           f"{self.path}{skipped}") from None

    def num_boxes(self, i: int) -> int:
        """Rows of image i, the whole-image box included (= `get(i).num_boxes`)."""
        return int(self.offsets[i + 1] - self.offsets[i])

    def get(self, image: str | int) -> Regions:
        """One image's regions, whole-image box first. Arrays are read-only views."""
        i = self.index(image) if isinstance(image, str) else int(image)
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} is out of range for {len(self)} images "
                             f"in {self.path}")
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        features, boxes = self._arrays()
        w, h = self.image_wh[i]
        return Regions(int(w), int(h), np.asarray(boxes[start:stop]),
                       np.asarray(features[start:stop]))

    __getitem__ = get  # a store is itself a random-access source of Regions

    @staticmethod
    def write(out_dir, items: Iterable[tuple[str, Regions]], feature_dim: int | None = None, *,
              progress: bool = True, total: int | None = None,
              extra_meta: Callable[[], Mapping] | None = None) -> FeatureStore:
        """Stream (image_id, Regions) into a new store at `out_dir` and open it.

        `feature_dim=None` takes D from the first image. Rows go straight to disk, so
        memory stays flat however many images there are. Everything is written to a
        temporary sibling directory that replaces `out_dir` only once complete, so a
        crash never leaves a store that looks whole. `extra_meta` is called after the
        last item, so it can report what the item stream skipped.
        """
        out_dir = os.path.abspath(os.fspath(out_dir))
        _check_replaceable(out_dir)
        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        # Not mkdtemp: its 0700 mode would stay on the store and lock out other users.
        tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{uuid.uuid4().hex}")
        os.mkdir(tmp)
        try:
            meta = _write_tables(tmp, out_dir, items, feature_dim, progress, total)
            meta.update(extra_meta() if extra_meta else {})
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            _replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return FeatureStore(out_dir)


def whole_image_first(regions: Regions) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N+1, 4] and features [N+1, D] with the whole-image row put first."""
    whole_box = np.array([[0, 0, regions.image_w - 1, regions.image_h - 1]], np.float32)
    # Summed in float64, so the float32 mean carries no accumulated rounding; it can
    # differ from the original's float32 sum only in the last bits.
    mean = regions.features.mean(axis=0, dtype=np.float64, keepdims=True).astype(np.float32)
    return (np.concatenate([whole_box, regions.boxes.astype(np.float32, copy=False)]),
            np.concatenate([mean, regions.features.astype(np.float32, copy=False)]))


def _write_tables(tmp, out_dir, items, feature_dim, progress, total) -> dict:
    ids: list[str] = []
    seen: set[str] = set()
    offsets, image_wh = [0], []
    features = boxes = None
    try:
        for image_id, regions in tqdm.tqdm(items, total=total, unit="image",
                                           disable=None if progress else True):
            if regions.num_boxes == 0:
                raise DataError(out_dir, f"image {image_id!r}", "num_boxes",
                                "has no boxes, so no whole-image mean feature",
                                "the readers skip such images; filter them before writing")
            if feature_dim is None:
                feature_dim = regions.features.shape[1]
            if regions.features.shape[1] != feature_dim:
                raise DataError(out_dir, f"image {image_id!r}", "features",
                                f"has width {regions.features.shape[1]}, expected {feature_dim}",
                                "every image of one store needs the same feature size")
            if image_id in seen:
                raise DataError(out_dir, f"image {image_id!r}", "image_id",
                                "is given twice", "each image goes into a store once")
            if features is None:
                features = _NpyRows(os.path.join(tmp, "features.npy"), feature_dim)
                boxes = _NpyRows(os.path.join(tmp, "boxes.npy"), 4)
            box_rows, feature_rows = whole_image_first(regions)
            boxes.append(box_rows)
            features.append(feature_rows)
            seen.add(image_id)
            ids.append(image_id)
            offsets.append(offsets[-1] + len(box_rows))
            image_wh.append((regions.image_w, regions.image_h))
    finally:
        for table in (features, boxes):
            if table is not None:
                table.close()
    if not ids:
        raise DataError(out_dir, None, None, "no usable image to write",
                        "check the source files and the skip summary")
    np.save(os.path.join(tmp, "offsets.npy"), np.asarray(offsets, np.int64))
    np.save(os.path.join(tmp, "image_wh.npy"), np.asarray(image_wh, np.float32))
    with open(os.path.join(tmp, "ids.json"), "w", encoding="utf-8") as f:
        json.dump(ids, f, ensure_ascii=False)
    return {"format": FORMAT, "version": VERSION, "feature_dim": int(feature_dim),
            "count": len(ids), "rows": offsets[-1]}


class _NpyRows:
    """Appends float32 rows to a .npy file whose row count is known only at the end."""

    def __init__(self, path: str, width: int):
        self.width, self.rows = width, 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * _HEADER_BYTES)  # replaced by the real header in close()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        assert rows.ndim == 2 and rows.shape[1] == self.width, rows.shape
        self.file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.seek(0)
        self.file.write(_npy_header((self.rows, self.width)))
        self.file.close()


def _npy_header(shape: tuple[int, int]) -> bytes:
    """A .npy version 1.0 header for a C-order float32 array, padded to _HEADER_BYTES."""
    text = repr({"descr": "<f4", "fortran_order": False, "shape": tuple(map(int, shape))})
    prefix = np.lib.format.magic(1, 0) + struct.pack("<H", _HEADER_BYTES - 10)
    header = prefix + (text.ljust(_HEADER_BYTES - len(prefix) - 1) + "\n").encode("latin1")
    assert len(header) == _HEADER_BYTES, shape
    return header


def _check_replaceable(out_dir: str) -> None:
    """Refuse to replace a directory that holds anything but a feature store."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise DataError(out_dir, None, None, "exists and is not a directory",
                        "choose another output path")
    entries = set(os.listdir(out_dir))
    if entries and not entries <= set(FILES):
        raise DataError(out_dir, None, None,
                        f"holds files that are not part of a feature store "
                        f"({sorted(entries - set(FILES))[:5]})",
                        "choose an empty or new output directory")


def _replace_dir(new: str, out_dir: str) -> None:
    """Move the finished store into place; the old one goes only after the new is there."""
    if not os.path.exists(out_dir):
        os.rename(new, out_dir)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-",
                           dir=os.path.dirname(out_dir))
    os.rename(out_dir, os.path.join(old, "store"))
    try:
        os.rename(new, out_dir)
    except BaseException:
        os.rename(os.path.join(old, "store"), out_dir)  # put the old store back
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)
