"""Error messages, the bad-record policy and skip counting shared by all readers."""

import pickle

import pytest

from bertgen_jax.data.records import (BadRecord, DataError, SkipCounter, check_on_bad_record,
                                      handle_bad_record)


def test_data_error_names_file_record_field_and_fix():
    err = DataError("ann.jsonl", "line 7", "frcnn", "member missing", "rebuild the zip")
    assert str(err) == "ann.jsonl, line 7, field 'frcnn': member missing (rebuild the zip)"
    assert isinstance(err, ValueError)
    assert str(DataError("a.tsv", None, None, "cannot read")) == "a.tsv: cannot read"


def test_errors_survive_pickling_with_their_fields():
    err = pickle.loads(pickle.dumps(BadRecord("empty caption", "f.json", "line 2", "caption_en",
                                              "caption is empty")))
    assert type(err) is BadRecord
    assert (err.reason, err.file, err.record, err.field) == ("empty caption", "f.json", "line 2",
                                                             "caption_en")
    assert str(err) == "f.json, line 2, field 'caption_en': caption is empty"
    plain = pickle.loads(pickle.dumps(DataError("x", "line 1", "boxes", "bad", "fix it")))
    assert str(plain) == "x, line 1, field 'boxes': bad (fix it)"


def test_skip_policy_counts_by_reason_and_error_policy_raises():
    skips = SkipCounter()
    a = BadRecord("empty caption", "f", "line 1", "caption_en", "caption is empty")
    b = BadRecord("non-finite features", "g", "line 4", "features", "contains NaN or inf")
    for problem in (a, b, a):
        handle_bad_record(problem, "skip", skips)
    assert skips.counts == {"empty caption": 2, "non-finite features": 1}
    assert skips.total == 3
    assert skips.summary() == (
        "skipped 3 records: 2 empty caption (first: f, line 1, field 'caption_en': caption is "
        "empty); 1 non-finite features (first: g, line 4, field 'features': contains NaN or inf)")
    with pytest.raises(BadRecord, match="caption is empty"):
        handle_bad_record(a, "error", skips)
    assert skips.total == 3
    assert SkipCounter().summary() == "skipped 0 records"


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="on_bad_record must be one of"):
        check_on_bad_record("ignore")
