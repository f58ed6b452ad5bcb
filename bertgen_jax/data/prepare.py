"""Turn a dataset's detector features into a FeatureStore, decoding each image once.

    python -m bertgen_jax.data.prepare --annotations train.json val.json --out stores/multi30k
    python -m bertgen_jax.data.prepare --tsv trainval_36.tsv --out stores/flickr30k

The readers check and decode; this module only picks which images to decode, hands
them to `FeatureStore.write`, and records what it was built from. A store whose
recorded sources (path, size, mtime) and settings still match is left as it is, so
the command can run before every training job at no cost.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.errors import debug_requested
from bertgen_jax.data.jsonl_zip import JsonlZipCaptions
from bertgen_jax.data.records import (ON_BAD_RECORD, BadRecord, DataError, Regions, SkipCounter,
                                      check_on_bad_record, handle_bad_record)
from bertgen_jax.data.tsv_features import TSV_COLUMNS, iter_tsv_features

log = logging.getLogger(__name__)


def prepare_annotations(annotation_files: Sequence, out_dir, on_bad_record: str = "skip", *,
                        feature_dim: int | None = None, progress: bool = True,
                        force: bool = False) -> FeatureStore:
    """Store every distinct image the annotation files' `frcnn` fields name.

    Store ids are the annotation lines' image ids (the `image` field), as
    `JsonlZipCaptions` reports them. An image named by several lines or files is
    decoded once; one id pointing at two different feature members is a DataError.
    Images with unusable features are skipped and listed in meta.json under
    "skipped" (or raised, with on_bad_record="error").
    """
    paths = [os.path.abspath(os.fspath(p)) for p in annotation_files]
    settings = {"reader": "annotations", "feature_dim": feature_dim}

    def build(skips: SkipCounter, skipped: list) -> FeatureStore:
        with contextlib.ExitStack() as stack:
            # fields={}: captions do not matter here, so no line is dropped for its text.
            sources = [stack.enter_context(JsonlZipCaptions(p, {}, feature_dim=feature_dim))
                       for p in paths]
            refs, zips = _distinct_images(sources)
            fingerprints = [_fingerprint(p) for p in paths + zips]
            items = _decode_annotated(refs, on_bad_record, skips, skipped)
            return FeatureStore.write(out_dir, items, feature_dim, progress=progress,
                                      total=len(refs),
                                      extra_meta=_meta(paths, settings, fingerprints, skips,
                                                       skipped))

    return _prepare(out_dir, paths, settings, on_bad_record, force, build)


def prepare_tsv(tsv_files, out_dir, on_bad_record: str = "skip", *,
                columns: Sequence[str] = TSV_COLUMNS, feature_dim: int | None = None,
                progress: bool = True, force: bool = False) -> FeatureStore:
    """Store every image of one or more bottom-up-attention TSV files, in file order.

    Releases split into several files (`.tsv.0`, `.tsv.1`, ...) are given together;
    an image id repeated across them is a DataError.
    """
    if isinstance(tsv_files, (str, os.PathLike)):
        tsv_files = [tsv_files]
    paths = [os.path.abspath(os.fspath(p)) for p in tsv_files]
    settings = {"reader": "tsv", "feature_dim": feature_dim, "columns": list(columns)}

    def build(skips: SkipCounter, skipped: list) -> FeatureStore:
        recorder = _TsvSkips(skips, skipped)
        # Each call opens its file at once, so a missing file fails before any work.
        readers = [iter_tsv_features(p, columns=columns, on_bad_record=on_bad_record,
                                     skips=recorder, feature_dim=feature_dim) for p in paths]
        fingerprints = [_fingerprint(p) for p in paths]
        items = (item for reader in readers for item in reader)
        try:
            return FeatureStore.write(out_dir, items, feature_dim, progress=progress,
                                      extra_meta=_meta(paths, settings, fingerprints, skips,
                                                       skipped))
        finally:
            for reader in readers:
                reader.close()  # closes the file of a reader stopped by an error

    return _prepare(out_dir, paths, settings, on_bad_record, force, build)


def _prepare(out_dir, inputs: list[str], settings: dict, on_bad_record: str, force: bool,
             build: Callable[[SkipCounter, list], FeatureStore]) -> FeatureStore:
    check_on_bad_record(on_bad_record)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if not force:
        store = _up_to_date(out_dir, inputs, settings, on_bad_record)
        if store is not None:
            log.info("%s is up to date with its sources (%d images); not rebuilding "
                     "(--force rebuilds)", out_dir, len(store))
            return store
    start = time.monotonic()
    skips, skipped = SkipCounter(), []
    store = build(skips, skipped)
    log.info("wrote %d images (%d rows of %d features) to %s in %.1fs", len(store),
             store.meta["rows"], store.feature_dim, out_dir, time.monotonic() - start)
    log.info("%s", skips.summary())
    return store


def _distinct_images(sources: list[JsonlZipCaptions]):
    """(source, index, image id) of each image's first line, and the zips they use."""
    first: dict[str, tuple[str, int, str]] = {}  # image id -> (file, line, zip@/member)
    refs, zips = [], set()
    for source in sources:
        # Feature locations without decoding: each image is then decoded once, not once per line.
        for index, (number, image_id, zip_path, member, _) in enumerate(source.entries):
            where = f"{os.path.realpath(zip_path)}@/{member}"
            if image_id in first:
                path, line, seen = first[image_id]
                if seen != where:
                    raise DataError(source.path, f"line {number}", "frcnn",
                                    f"image {image_id!r} is {where} here but {seen} on "
                                    f"{path} line {line}",
                                    "one image id must name one feature member; prepare such "
                                    "annotation files into separate stores")
                continue
            first[image_id] = (source.path, number, where)
            refs.append((source, index, image_id))
            zips.add(os.path.realpath(zip_path))
    return refs, sorted(zips)


def _decode_annotated(refs, on_bad_record: str, skips: SkipCounter,
                      skipped: list) -> Iterator[tuple[str, Regions]]:
    for source, index, image_id in refs:
        try:
            record = source[index]
        except BadRecord as problem:
            handle_bad_record(problem, on_bad_record, skips)  # raises under "error"
            skipped.append(_skip_entry(image_id, problem))
            continue
        yield image_id, record.regions


class _TsvSkips(SkipCounter):
    """Forwards skips to the shared counter and keeps which image each one was.

    The TSV reader drops bad rows itself; the counter it reports to is the only place
    a skipped row shows up, and its record reads "line N (image ID)".
    """

    _IMAGE = re.compile(r"\(image (.*)\)$")

    def __init__(self, skips: SkipCounter, skipped: list):
        super().__init__()
        self.skips, self.skipped = skips, skipped

    def add(self, problem: BadRecord) -> None:
        self.skips.add(problem)
        match = self._IMAGE.search(problem.record or "")
        self.skipped.append(_skip_entry(match.group(1) if match else None, problem))


def _skip_entry(image_id: str | None, problem: BadRecord) -> dict:
    return {"image_id": image_id, "reason": problem.reason, "problem": str(problem)}


def _fingerprint(path: str) -> dict:
    stat = os.stat(path)
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _meta(inputs, settings, fingerprints, skips: SkipCounter, skipped: list):
    # Called by FeatureStore.write after the last image, when the skips are all known.
    return lambda: {"inputs": inputs, "settings": settings, "sources": fingerprints,
                    "skipped": skipped, "skip_summary": skips.summary()}


def _up_to_date(out_dir: str, inputs: list[str], settings: dict,
                on_bad_record: str) -> FeatureStore | None:
    """The existing store at out_dir if it was built from these very files, else None."""
    try:
        store = FeatureStore(out_dir)
    except DataError:  # absent, incomplete or damaged: build it
        return None
    meta = store.meta
    if meta.get("inputs") != inputs or meta.get("settings") != settings:
        return None
    for recorded in meta.get("sources", []):
        try:
            if _fingerprint(recorded["path"]) != recorded:
                return None
        except OSError:
            return None
    if on_bad_record == "error" and meta.get("skipped"):
        return None  # rebuilding raises on the first bad image, as asked
    return store


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bertgen_jax.data.prepare",
        description="Decode detector features once into a FeatureStore directory.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--annotations", nargs="+", metavar="FILE.jsonl",
                        help="JSON-lines annotation files whose 'frcnn' fields name feature zips")
    source.add_argument("--tsv", nargs="+", metavar="FILE.tsv",
                        help="bottom-up-attention TSV file(s)")
    parser.add_argument("--tsv-columns", default=",".join(TSV_COLUMNS),
                        help="comma-separated TSV column order (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="DIR", help="store directory to write")
    parser.add_argument("--on-bad-record", choices=ON_BAD_RECORD, default="skip",
                        help="skip (and list in meta.json) or stop at an unusable image")
    parser.add_argument("--feature-dim", type=_positive, default=None,
                        help="expected feature size D, checked per image (default: the first's)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the store is up to date with its sources")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.annotations:
            prepare_annotations(args.annotations, args.out, args.on_bad_record,
                                feature_dim=args.feature_dim, force=args.force)
        else:
            prepare_tsv(args.tsv, args.out, args.on_bad_record,
                        columns=args.tsv_columns.split(","), feature_dim=args.feature_dim,
                        force=args.force)
    except (DataError, OSError) as err:  # OSError: the store cannot be written (permissions, disk)
        if debug_requested():
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag in its one error line)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
