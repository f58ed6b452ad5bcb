"""Line-aligned parallel text: Multi30k, IWSLT and SETIMES as `train.en` + `train.de`.

Line i of one file translates line i of the other, so the two files must have the
same number of lines; a difference means every later pair is misaligned and is
always a DataError. Lines end at "\\n" only (as `wc -l` counts them), so a stray
"\\r" or Unicode line separator inside a sentence cannot shift the alignment.
"""

from __future__ import annotations

import os

from bertgen_jax.data.records import (BadRecord, DataError, SkipCounter, TextPair,
                                      check_on_bad_record, handle_bad_record)


def read_parallel_text(src_path, tgt_path, *, on_bad_record: str = "skip",
                       skips: SkipCounter | None = None) -> list[TextPair]:
    """Read aligned pairs, surrounding whitespace removed.

    A pair with an empty side is a bad record: dropped and counted under "skip",
    raised under "error".
    """
    check_on_bad_record(on_bad_record)
    skips = skips if skips is not None else SkipCounter()
    src_path, tgt_path = os.fspath(src_path), os.fspath(tgt_path)
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(src_path, None, None,
                        f"has {len(src)} lines but its parallel file {tgt_path} has {len(tgt)}",
                        "the two sides must be line-aligned")
    pairs = []
    for number, (s, t) in enumerate(zip(src, tgt), start=1):
        try:
            for path, text in ((src_path, s), (tgt_path, t)):
                if not text:
                    raise BadRecord("empty line", path, f"line {number}", "text",
                                    "sentence is empty")
        except BadRecord as problem:
            handle_bad_record(problem, on_bad_record, skips)
            continue
        pairs.append(TextPair(s, t))
    return pairs


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(path, None, None, f"cannot read text file ({err.strerror})",
                        "check the path in the config") from None
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":  # the usual final newline ends the last line, it starts none
        raw_lines.pop()
    lines = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            # A byte-order mark is not part of the first sentence.
            lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8").strip())
        except UnicodeDecodeError as err:
            raise DataError(path, f"line {number}", "text", f"is not UTF-8 ({err.reason} "
                            f"at byte {err.start})") from None
    return lines
