"""One compile counter: the train and eval steps and every decoder stage record their compiles here
(the uncached reference decoders of decode/reference.py, used by tests and benchmarks, do not).

A jitted function's Python body runs only while JAX traces it, i.e. once per compile, so a
function that calls `record(name, *key)` first thing counts its own compiles, keyed by the
static shapes that select a compile. Tests and the run summary read `COUNTS`; "a recompile
after step 1 is a bug" is checked against it.
"""

from __future__ import annotations

import collections

COUNTS: collections.Counter = collections.Counter()  # (name, *key) -> traces


def record(name: str, *key) -> None:
    COUNTS[(name,) + key] += 1


def since(before: dict) -> dict:
    """What was traced after `before` (a copy of COUNTS taken earlier): key -> new traces."""
    return {k: v - before.get(k, 0) for k, v in COUNTS.items() if v != before.get(k, 0)}
