"""Unrolling: literal layouts from docs/specification.md, truncation, bad pairs."""

import numpy as np
import pytest

from bertgen_jax.data.unroll import Pair, TooLong, fit_budget, unroll

T, R, E = 1, 2, 3  # token kinds: text, region, [END]


def arrays(ex):
    return [ex.token_ids.tolist(), ex.token_kind.tolist(), ex.token_type.tolist(),
            ex.positions.tolist(), ex.region_index.tolist(), ex.mask_index, ex.label]


def test_mmt_layout():
    pair = Pair("mmt", "de", np.array([200, 201]), np.array([300, 301]), image=5, num_regions=3)
    got = [arrays(e) for e in unroll(pair, budget=64)]
    assert got == [
        # [TO_DE] [CLS] x1 x2 [SEP] [MASK] [SEP] [IMG]whole [IMG]r1 [IMG]r2 [END]
        [[17, 101, 200, 201, 102, 103, 102, 0, 0, 0, 0], [T] * 7 + [R] * 3 + [E], [0] * 7 + [2] * 4,
         [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 8], [0] * 7 + [0, 1, 2, -1], 5, 300],
        [[17, 101, 200, 201, 102, 300, 103, 102, 0, 0, 0, 0], [T] * 8 + [R] * 3 + [E], [0] * 8 + [2] * 4,
         [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9], [0] * 8 + [0, 1, 2, -1], 6, 301],
        [[17, 101, 200, 201, 102, 300, 301, 103, 102, 0, 0, 0, 0], [T] * 9 + [R] * 3 + [E], [0] * 9 + [2] * 4,
         [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 10], [0] * 9 + [0, 1, 2, -1], 7, 1],
    ]
    assert {e.image for e in unroll(pair, 64)} == {5}


def test_mt_layout():
    pair = Pair("mt", "en", np.array([210]), np.array([310]))
    got = [arrays(e) for e in unroll(pair, budget=512)]
    assert got == [
        # [TO_EN] [CLS] x [SEP] [MASK] [SEP] [END]; [END] stays at T+1 with no region at T.
        [[16, 101, 210, 102, 103, 102, 0], [T] * 6 + [E], [0] * 6 + [2], [0, 1, 2, 3, 4, 5, 7], [-1] * 7, 4, 310],
        [[16, 101, 210, 102, 310, 103, 102, 0], [T] * 7 + [E], [0] * 7 + [2], [0, 1, 2, 3, 4, 5, 6, 8], [-1] * 8, 5, 1],
    ]
    assert {e.image for e in unroll(pair, 512)} == {-1}


def test_ic_layout():
    pair = Pair("ic", "tr", np.array([], np.int32), np.array([320]), image=2, num_regions=2)
    got = [arrays(e) for e in unroll(pair, budget=64)]
    assert got == [
        # [TO_TU] [CLS] [SEP] [MASK] [SEP] [IMG]whole [IMG]r1 [END]
        [[20, 101, 102, 103, 102, 0, 0, 0], [T] * 5 + [R] * 2 + [E], [0] * 5 + [2] * 3,
         [0, 1, 2, 3, 4, 5, 5, 6], [0] * 5 + [0, 1, -1], 3, 320],
        [[20, 101, 102, 320, 103, 102, 0, 0, 0], [T] * 6 + [R] * 2 + [E], [0] * 6 + [2] * 3,
         [0, 1, 2, 3, 4, 5, 6, 6, 7], [0] * 6 + [0, 1, -1], 4, 1],
    ]


def test_truncation_takes_from_the_longer_of_boxes_and_text():
    # 6 fixed + 8 source + 2 target + 20 regions = 36 > 20: cuts alternate once the sides meet.
    pair = Pair("mmt", "de", np.arange(200, 208), np.array([300, 301]), image=0, num_regions=20)
    src, regions = fit_budget(pair, budget=20)
    assert (len(src), regions) == (5, 7)
    assert 6 + len(src) + 2 + regions == 20
    assert max(len(e) for e in unroll(pair, 20)) == 20
    # Only boxes to cut (captioning has no source): the whole-image region always stays.
    ic = Pair("ic", "en", np.array([], np.int32), np.arange(300, 303), image=0, num_regions=10)
    assert fit_budget(ic, budget=14)[1] == 5


def test_pairs_that_cannot_fit_or_make_no_sense_are_errors():
    with pytest.raises(TooLong, match="target of 10 wordpieces does not fit a sequence budget of 12"):
        unroll(Pair("mt", "en", np.array([1, 2]), np.arange(300, 310)), budget=12)
    with pytest.raises(ValueError, match="unknown task 'vqa'"):
        unroll(Pair("vqa", "en", np.array([1]), np.array([2])), budget=64)
    with pytest.raises(ValueError, match="unknown target language 'xx'"):
        unroll(Pair("mt", "xx", np.array([1]), np.array([2])), budget=64)
    with pytest.raises(ValueError, match="mmt pair without an image region"):
        unroll(Pair("mmt", "de", np.array([1]), np.array([2])), budget=64)
