"""Line-aligned parallel text files."""

import re

import pytest

from bertgen_jax.data.parallel_text import read_parallel_text
from bertgen_jax.data.records import BadRecord, DataError, SkipCounter, TextPair

EN = ["A man sleeps.", "Two dogs\u2028play.", "Café au lait."]
DE = ["Ein Mann schläft.", "Zwei Hunde spielen.", "Milchkaffee."]


def write(path, lines, end="\n"):
    path.write_bytes((end.join(lines) + end).encode("utf-8"))
    return path


def test_round_trip_is_exact_and_unicode_separators_do_not_split(tmp_path):
    pairs = read_parallel_text(write(tmp_path / "train.en", EN), write(tmp_path / "train.de", DE))
    assert pairs == [TextPair(e, d) for e, d in zip(EN, DE)]


def test_crlf_and_missing_final_newline(tmp_path):
    src = write(tmp_path / "a.en", EN, end="\r\n")
    tgt = tmp_path / "a.de"
    tgt.write_bytes("\n".join(DE).encode("utf-8"))
    assert read_parallel_text(src, tgt) == [TextPair(e, d) for e, d in zip(EN, DE)]


def test_mismatched_line_counts_name_both_files(tmp_path):
    src, tgt = write(tmp_path / "train.en", EN), write(tmp_path / "train.de", DE[:2])
    with pytest.raises(DataError, match=re.escape(
            f"{src}: has 3 lines but its parallel file {tgt} has 2")):
        read_parallel_text(src, tgt)


def test_empty_side_is_skipped_and_counted_or_raised(tmp_path):
    src = write(tmp_path / "train.en", EN)
    tgt = write(tmp_path / "train.de", [DE[0], "  ", DE[2]])
    skips = SkipCounter()
    assert read_parallel_text(src, tgt, skips=skips) == [TextPair(EN[0], DE[0]),
                                                        TextPair(EN[2], DE[2])]
    assert skips.counts == {"empty line": 1}
    with pytest.raises(BadRecord, match=re.escape(f"{tgt}, line 2, field 'text': sentence is empty")):
        read_parallel_text(src, tgt, on_bad_record="error")


def test_missing_file_and_bad_utf8_name_the_file(tmp_path):
    src = write(tmp_path / "train.en", EN)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'x.de'}: cannot read text file")):
        read_parallel_text(src, tmp_path / "x.de")
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"ok\n\xff\xfe broken\nok\n")
    with pytest.raises(DataError, match=re.escape(f"{bad}, line 2, field 'text': is not UTF-8")):
        read_parallel_text(src, bad)
