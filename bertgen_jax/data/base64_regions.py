"""Decode one image's detector output, stored as base64 float32 arrays, into `Regions`.

Both feature formats the original relies on (per-image JSON inside a zip, and the
bottom-up-attention TSV) store the same fields the same way: `image_w`, `image_h`,
`num_boxes`, and base64 of little-endian float32 `boxes` [N,4], `features` [N,D] and
optionally `classes` [N,C]. Both readers call `decode_regions`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import numpy as np

from bertgen_jax.data.records import BadRecord, DataError, Regions

_FLOAT32 = np.dtype("<f4")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def decode_regions(entry: Mapping[str, object], *, file, record: str,
                   feature_dim: int | None = None, with_classes: bool = False) -> Regions:
    """Check and decode one image's fields.

    Raises DataError when the entry is malformed (missing field, bad base64, array
    length not a multiple of num_boxes) and BadRecord when it is well formed but
    unusable (no boxes, non-finite numbers). `feature_dim=None` takes D from the data.
    """
    image_w = _int_field(entry, "image_w", file, record, minimum=1)
    image_h = _int_field(entry, "image_h", file, record, minimum=1)
    n = _int_field(entry, "num_boxes", file, record, minimum=0)

    boxes = _float32_field(entry, "boxes", file, record)
    if boxes.size != n * 4:
        raise DataError(file, record, "boxes",
                        f"holds {boxes.size} float32 values, expected num_boxes*4 = {n * 4}")
    features = _float32_field(entry, "features", file, record)
    dim = _row_width(features, n, feature_dim, "features", file, record)
    classes = None
    if with_classes and "classes" in entry:
        classes = _float32_field(entry, "classes", file, record)
        classes = classes.reshape(n, _row_width(classes, n, None, "classes", file, record))

    # Structure is sound from here on; what follows makes this one image unusable.
    if n == 0:
        raise BadRecord("no boxes", file, record, "num_boxes", "the detector found no boxes")
    if not np.isfinite(boxes).all():
        raise BadRecord("non-finite boxes", file, record, "boxes", "contains NaN or inf")
    if not np.isfinite(features).all():
        raise BadRecord("non-finite features", file, record, "features", "contains NaN or inf")
    return Regions(image_w, image_h, boxes.reshape(n, 4), features.reshape(n, dim), classes)


def _int_field(entry, field, file, record, *, minimum: int) -> int:
    if field not in entry:
        raise DataError(file, record, field, "missing")
    value = entry[field]
    try:
        # JSON gives ints; the TSV gives strings of digits. Neither may be a float.
        number = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise DataError(file, record, field, f"expected an integer >= {minimum}, got {value!r}")
    return number


def _float32_field(entry, field, file, record) -> np.ndarray:
    if field not in entry:
        raise DataError(file, record, field, "missing")
    value = entry[field]
    if not isinstance(value, (str, bytes)):
        raise DataError(file, record, field,
                        f"expected a base64 string, got {type(value).__name__}")
    try:
        # validate=True: a stray character is an error here, not silently dropped and reported
        # later as an array of the wrong size.
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        bad = _NOT_BASE64.search(text)
        why = f"character {bad.group()!r} at offset {bad.start()}" if bad else str(err)
        raise DataError(file, record, field, f"is not valid base64 ({why})",
                        "the feature file is damaged: re-create it") from None
    if len(raw) % _FLOAT32.itemsize:
        raise DataError(file, record, field,
                        f"decodes to {len(raw)} bytes, not a whole number of float32 values")
    return np.frombuffer(raw, dtype=_FLOAT32)


def _row_width(values: np.ndarray, n: int, expected: int | None, field, file, record) -> int:
    """Width of the [n, width] array stored flat in `values`."""
    if expected is not None:
        if values.size != n * expected:
            raise DataError(file, record, field,
                            f"holds {values.size} float32 values, expected "
                            f"num_boxes*{expected} = {n * expected}")
        return expected
    if n == 0:
        if values.size:
            raise DataError(file, record, field,
                            f"holds {values.size} float32 values but num_boxes is 0")
        return 0
    if values.size == 0 or values.size % n:
        raise DataError(file, record, field,
                        f"holds {values.size} float32 values, not a multiple of num_boxes = {n}")
    return values.size // n
