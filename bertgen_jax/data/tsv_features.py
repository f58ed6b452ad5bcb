"""Bottom-up-attention detector features in the widely shared TSV layout.

One image per line, tab-separated, no header: `image_id, image_w, image_h,
num_boxes, boxes, features`, the last two base64 of float32 [N,4] and [N,D]. Some
releases add columns or change their order; pass `columns` to name them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence

from bertgen_jax.data.base64_regions import decode_regions
from bertgen_jax.data.records import (BadRecord, DataError, Regions, SkipCounter,
                                      check_on_bad_record, handle_bad_record)

TSV_COLUMNS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")

# A row holds ~36 boxes x 2048 floats of base64 (~400 kB), far above csv's 128 kB default.
_FIELD_SIZE_LIMIT = 2**31 - 1


def iter_tsv_features(path, *, columns: Sequence[str] = TSV_COLUMNS,
                      on_bad_record: str = "skip", skips: SkipCounter | None = None,
                      feature_dim: int | None = None,
                      with_classes: bool = False) -> Iterator[tuple[str, Regions]]:
    """Yield (image_id, Regions) line by line, so a large file never sits in memory whole.

    Malformed lines raise DataError; unusable images (no boxes, NaN/inf) follow
    `on_bad_record` and are counted in `skips`. A repeated image id is a DataError.
    """
    check_on_bad_record(on_bad_record)
    missing = [c for c in TSV_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"columns {list(columns)} lack {missing}")
    skips = skips if skips is not None else SkipCounter()
    path = os.fspath(path)
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(path, None, None, f"cannot read feature file ({err.strerror})",
                        "check the path in the config") from None
    # The checks above run on the call itself, not on the first next().
    return _rows(f, path, tuple(columns), on_bad_record, skips, feature_dim, with_classes)


def _rows(f, path, columns, on_bad_record, skips, feature_dim, with_classes):
    seen: dict[str, int] = {}  # image id -> line it was first seen on
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    with f:
        try:
            for row in reader:
                if not row:
                    continue
                where = f"line {reader.line_num}"
                if len(row) != len(columns):
                    raise DataError(path, where, None,
                                    f"has {len(row)} tab-separated columns, expected "
                                    f"{len(columns)} ({', '.join(columns)})")
                entry = dict(zip(columns, row))
                image_id = entry["image_id"]
                if image_id in seen:
                    raise DataError(path, where, "image_id",
                                    f"{image_id!r} already appeared on line {seen[image_id]}")
                seen[image_id] = reader.line_num
                try:
                    regions = decode_regions(entry, file=path, record=f"{where} (image {image_id})",
                                             feature_dim=feature_dim, with_classes=with_classes)
                except BadRecord as problem:
                    handle_bad_record(problem, on_bad_record, skips)
                    continue
                yield image_id, regions
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(path, f"after line {reader.line_num}", None,
                            f"cannot be parsed as tab-separated UTF-8 ({err})") from None


def load_tsv_features(path, **kwargs) -> dict[str, Regions]:
    """All images of a TSV file as {image_id: Regions}; arguments as `iter_tsv_features`."""
    return dict(iter_tsv_features(path, **kwargs))
