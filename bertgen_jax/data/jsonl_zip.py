"""The original's caption annotations: JSON lines pointing into zips of per-image features.

Each annotation line is an object such as
    {"image": "1000092795.jpg", "frcnn": "train_frcnn.zip@/1000092795.json",
     "caption_en": "Two young guys ...", "caption_de": "Zwei junge Männer ..."}
`frcnn` names a zip next to the annotation file and a member inside it; the member
is one JSON object with `image_w`, `image_h`, `num_boxes` and base64 float32 `boxes`,
`features` (and `classes`). The second language always lives in `caption_de`
whatever it really is, so callers say which field holds which language.

`JsonlZipCaptions` reads and checks every annotation line, opens each zip once and
checks every member exists when it is built; per-image features are decoded when a
record is read, since a whole split's features do not fit in memory.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from bertgen_jax import vocab
from bertgen_jax.data.base64_regions import decode_regions
from bertgen_jax.data.records import (BadRecord, CaptionRecord, DataError, SkipCounter,
                                      check_on_bad_record, handle_bad_record)

class AnnotationEntry(NamedTuple):
    line: int  # 1-based line number in the annotation file
    image_id: str
    zip_path: str
    member: str
    captions: dict  # language -> caption


DEFAULT_FIELDS = {"caption_en": "en", "caption_de": "de"}


class JsonlZipCaptions:
    """Random-access view of one annotation file and the feature zips it names.

    `fields` maps annotation fields to language codes, e.g. {"caption_de": "fr"} for
    Multi30k French; only these fields are read and checked. Lines with an empty
    caption are handled at construction by `on_bad_record`; `len()` counts the rest.
    Indexing decodes features and raises BadRecord for an unusable image whatever the
    policy (a random-access source cannot drop an index); iterating applies the policy.
    """

    def __init__(self, annotation_path, fields: Mapping[str, str] = DEFAULT_FIELDS, *,
                 on_bad_record: str = "skip", skips: SkipCounter | None = None,
                 feature_dim: int | None = None, with_classes: bool = False):
        check_on_bad_record(on_bad_record)
        for field, lang in fields.items():
            if lang not in vocab.LANG_TAGS:
                raise ValueError(f"fields[{field!r}] = {lang!r} is not a known language; "
                                 f"known: {sorted(vocab.LANG_TAGS)}")
        self.path = os.fspath(annotation_path)
        self.fields = dict(fields)
        self.on_bad_record = on_bad_record
        self.skips = skips if skips is not None else SkipCounter()
        self.feature_dim, self.with_classes = feature_dim, with_classes
        self._zips: dict[str, zipfile.ZipFile] = {}
        # One entry per usable line: (line number, image id, zip path, member, captions).
        self._entries: list[tuple[int, str, str, str, dict[str, str]]] = []
        self._read_annotations()

    def _read_annotations(self) -> None:
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError as err:
            raise DataError(self.path, None, None, f"cannot read annotation file ({err.strerror})",
                            "check the path in the config") from None
        base = os.path.dirname(self.path)
        members: dict[str, set[str]] = {}  # zip path -> its member names
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"line {number}"
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(self.path, where, None, f"is not valid JSON ({err})") from None
            if not isinstance(obj, dict):
                raise DataError(self.path, where, None,
                                f"expected a JSON object, got {type(obj).__name__}")
            zip_path, member = self._locate(obj, where, base)
            if zip_path not in members:
                members[zip_path] = set(self._open_zip(zip_path, where).namelist())
            if member not in members[zip_path]:
                raise DataError(self.path, where, "frcnn",
                                f"member {member!r} is not in {zip_path}")
            try:
                captions = self._captions(obj, where)
            except BadRecord as problem:
                handle_bad_record(problem, self.on_bad_record, self.skips)
                continue
            image_id = str(obj.get("image", member))
            self._entries.append((number, image_id, zip_path, member, captions))

    def _locate(self, obj, where, base) -> tuple[str, str]:
        frcnn = obj.get("frcnn")
        if not isinstance(frcnn, str) or "@/" not in frcnn:
            raise DataError(self.path, where, "frcnn",
                            f"expected 'NAME.zip@/MEMBER', got {frcnn!r}")
        zip_name, member = frcnn.split("@/", 1)
        return os.path.join(base, zip_name), member

    def _open_zip(self, zip_path, where) -> zipfile.ZipFile:
        if zip_path not in self._zips:
            try:
                self._zips[zip_path] = zipfile.ZipFile(zip_path)
            except (OSError, zipfile.BadZipFile) as err:
                raise DataError(self.path, where, "frcnn", f"cannot open feature zip {zip_path} "
                                f"({getattr(err, 'strerror', None) or err})",
                                "paths in 'frcnn' are relative to the annotation file") from None
        return self._zips[zip_path]

    def _captions(self, obj, where) -> dict[str, str]:
        captions = {}
        for field, lang in self.fields.items():
            text = obj.get(field)
            if not isinstance(text, str):
                raise DataError(self.path, where, field,
                                f"expected a caption string, got {text!r}",
                                "check the field->language mapping given to the reader")
            if not text.strip():
                raise BadRecord("empty caption", self.path, where, field, "caption is empty")
            captions[lang] = text.strip()
        return captions

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[AnnotationEntry]:
        """Each usable line's location and captions, without decoding its features: what the
        prepare step and tokenization need (features come from the prepared store)."""
        return [AnnotationEntry(*e) for e in self._entries]

    def __getitem__(self, index: int) -> CaptionRecord:
        number, image_id, zip_path, member, captions = self._entries[index]
        record = f"member {member} (from {os.path.basename(self.path)} line {number})"
        try:
            obj = json.loads(self._open_zip(zip_path, f"line {number}").read(member))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
            # A damaged member fails only when read (bad CRC, truncated or corrupt deflate data,
            # an unsupported compression): each is named here, not raised bare from zlib.
            what = "cannot be decompressed" if isinstance(err, zlib.error) else "cannot be read"
            raise DataError(zip_path, record, None, f"{what} ({err})",
                            "the zip is damaged: re-create or re-download it") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(zip_path, record, None, f"is not valid JSON ({err})") from None
        if not isinstance(obj, dict):
            raise DataError(zip_path, record, None,
                            f"expected a JSON object, got {type(obj).__name__}")
        regions = decode_regions(obj, file=zip_path, record=record,
                                 feature_dim=self.feature_dim, with_classes=self.with_classes)
        return CaptionRecord(image_id, captions, regions)

    def __iter__(self) -> Iterator[CaptionRecord]:
        for index in range(len(self)):
            try:
                yield self[index]
            except BadRecord as problem:
                handle_bad_record(problem, self.on_bad_record, self.skips)

    def close(self) -> None:
        for z in self._zips.values():
            z.close()
        self._zips.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        # Open zip handles cannot be pickled (grain workers get a copy of the source);
        # each copy reopens them on first read.
        return {**self.__dict__, "_zips": {}}
