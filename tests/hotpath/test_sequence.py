"""Sequence-gap kernel against its plain-Python oracle, plus hand-checked cases."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_GAP, KIND_TRADE, RECORD_DTYPE
from fairfeed.hotpath.sequence import SequenceTracker, detect_gaps_reference


def _recs(rows: list[tuple[int, int, int]]) -> np.ndarray:
    recs = np.zeros(len(rows), RECORD_DTYPE)
    for i, (inst, kind, seq) in enumerate(rows):
        recs[i]["instrument"], recs[i]["kind"], recs[i]["sequence"] = inst, kind, seq
        recs[i]["price"] = 100.0 + i
    return recs


def test_gap_repeat_and_reconnect() -> None:
    t = SequenceTracker(2, (KIND_TRADE, KIND_BID, KIND_ASK))
    recs = _recs([(0, 1, 10), (0, 2, 11), (0, 3, 11), (1, 1, 5), (0, 1, 15), (0, 1, 14)])
    gaps = t.check(recs, 0, len(recs))
    assert len(gaps) == 1
    g = gaps[0]
    assert (g["kind"], g["instrument"], g["sequence"], g["size"], g["price"]) == (
        KIND_GAP, 0, 15, 3.0, 0.0,
    )  # fmt: skip
    t.reset()  # a reconnect: the next number sets the expectation, whatever it is
    assert len(t.check(_recs([(0, 1, 500), (0, 1, 501)]), 0, 2)) == 0


def test_untracked_kinds_and_unnumbered_records_are_ignored() -> None:
    t = SequenceTracker(1, (KIND_TRADE,))
    recs = _recs([(0, 1, 1), (0, 2, 9), (0, 1, -1), (0, 1, 2)])
    assert len(t.check(recs, 0, 4)) == 0


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([KIND_TRADE, KIND_BID, KIND_ASK]),
            st.integers(-1, 40),
        ),
        max_size=60,
    ),
    split=st.integers(0, 60),
)
def test_kernel_equals_reference(rows: list[tuple[int, int, int]], split: int) -> None:
    recs = _recs(rows)
    split = min(split, len(recs))
    t = SequenceTracker(3, (KIND_TRADE, KIND_BID))  # instrument 3 is out of range: ignored
    ref_last = t.last_seq.copy()
    got, want = [], []
    for a, b in ((0, split), (split, len(recs))):
        got += [
            (int(g["instrument"]), int(g["sequence"]), int(g["size"])) for g in t.check(recs, a, b)
        ]
        want += detect_gaps_reference(recs, a, b, ref_last, t.tracked)
    assert got == want
    assert np.array_equal(t.last_seq, ref_last)
