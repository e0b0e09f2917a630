"""Sequence kernel against its plain-Python oracle, plus hand-checked cases."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_GAP, KIND_TRADE, RECORD_DTYPE
from fairfeed.hotpath.sequence import SequenceTracker, missed, track_sequences_reference

ALL = (KIND_TRADE, KIND_BID, KIND_ASK)


def _recs(rows: list[tuple[int, int, int]], venue: int = 0) -> np.ndarray:
    recs = np.zeros(len(rows), RECORD_DTYPE)
    for i, (inst, kind, seq) in enumerate(rows):
        recs[i]["instrument"], recs[i]["kind"], recs[i]["sequence"] = inst, kind, seq
        recs[i]["venue"] = venue
        recs[i]["price"] = 100.0 + i
    return recs


def _table(n_inst: int = 2, n_src: int = 1) -> np.ndarray:
    return np.full((n_inst, n_src), -1, np.int64)


def test_gap_and_quote_pairs() -> None:
    t = SequenceTracker(np.array([0]), ALL)
    last = _table()
    recs = _recs([(0, 1, 10), (0, 2, 11), (0, 3, 11), (1, 1, 5), (0, 1, 15)])
    kept, gaps = t.check(recs, last)
    assert kept == 5  # bid and ask share their number
    assert len(gaps) == 1
    g = gaps[0]
    assert (g["kind"], g["instrument"], g["sequence"], g["size"], g["price"]) == (
        KIND_GAP, 0, 15, 3.0, 0.0,
    )  # fmt: skip
    assert last[:, 0].tolist() == [15, 5]


def test_the_table_outlives_the_tracker() -> None:
    """A new tracker on the same table (a new connection, a restarted worker) reports what
    was missed in between as one gap with the exact count."""
    last = _table()
    SequenceTracker(np.array([0]), (KIND_TRADE,)).check(_recs([(0, 1, 7), (1, 1, 3)]), last)
    kept, gaps = SequenceTracker(np.array([0]), (KIND_TRADE,)).check(
        _recs([(0, 1, 12), (0, 1, 13), (1, 1, 4)]), last
    )
    assert kept == 3
    assert [(int(g["instrument"]), int(g["sequence"]), int(g["size"])) for g in gaps] == [
        (0, 12, 4)
    ]


def test_records_published_already_are_dropped_and_compacted() -> None:
    t = SequenceTracker(np.array([0]), (KIND_TRADE,))
    last = _table()
    t.check(_recs([(0, 1, 5)]), last)
    recs = _recs([(0, 1, 4), (0, 1, 5), (0, 1, 6), (0, 2, 1), (0, 1, 6), (0, 1, 7)])
    kept, gaps = t.check(recs, last)
    assert kept == 3 and len(gaps) == 0
    assert recs["sequence"][:3].tolist() == [6, 1, 7]  # the untracked bid stays, in order
    assert recs["kind"][:3].tolist() == [1, 2, 1]


def test_sources_are_separate_streams() -> None:
    """One instrument at two venues of a provider: two rows, two numberings."""
    t = SequenceTracker(np.array([-1, 0, 1]), (KIND_TRADE,))
    last = _table(1, 2)
    recs = np.concatenate([_recs([(0, 1, 100)], venue=1), _recs([(0, 1, 3)], venue=2)])
    recs = np.concatenate([recs, _recs([(0, 1, 101)], venue=1), _recs([(0, 1, 9)], venue=0)])
    kept, gaps = t.check(recs, last)
    assert kept == 4 and len(gaps) == 0  # venue 0 has no source: not tracked
    assert last.tolist() == [[101, 3]]


def test_untracked_kinds_and_unnumbered_records_are_kept() -> None:
    t = SequenceTracker(np.array([0]), (KIND_TRADE,))
    recs = _recs([(0, 1, 1), (0, 2, 9), (0, 1, -1), (0, 1, 2)])
    kept, gaps = t.check(recs, _table(1))
    assert kept == 4 and len(gaps) == 0


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([KIND_TRADE, KIND_BID, KIND_ASK]),
            st.integers(-1, 40),
            st.integers(0, 2),
        ),
        max_size=60,
    ),
    split=st.integers(0, 60),
)
def test_kernel_equals_reference(rows: list[tuple[int, int, int, int]], split: int) -> None:
    recs = np.zeros(len(rows), RECORD_DTYPE)
    for i, (inst, kind, seq, venue) in enumerate(rows):
        recs[i]["instrument"], recs[i]["kind"], recs[i]["sequence"] = inst, kind, seq
        recs[i]["venue"], recs[i]["price"] = venue, i
    split = min(split, len(recs))
    venues = np.array([0, 1])  # venue 2 has no source; instrument 3 is out of range
    t = SequenceTracker(venues, (KIND_TRADE, KIND_BID), max_jump=15)  # reached by the ids
    last, ref_last = _table(3, 2), _table(3, 2)
    got, want = [], []
    for a, b in ((0, split), (split, len(recs))):
        part = recs[a:b].copy()
        kept, gaps = t.check(part, last)
        got += [float(p) for p in part["price"][:kept]]
        got += [(int(g["instrument"]), int(g["venue"]), int(g["sequence"]), int(g["size"]))
                for g in gaps]  # fmt: skip
        idx, ref_gaps = track_sequences_reference(recs[a:b], ref_last, venues, t.tracked, 15)
        want += [float(recs[a + i]["price"]) for i in idx]
        want += [(inst, int(venues.tolist().index(src)), seq, n) for inst, src, seq, n in ref_gaps]
    assert got == want
    assert np.array_equal(last, ref_last)


def test_an_absurd_id_is_a_gap_of_unknown_size_and_does_not_blind_the_stream() -> None:
    """A trade id of 9e18 between 101 and 102: one gap of unknown size (not 9e18 missed), every
    record kept, and the real 10-id gap after it still seen."""
    t = SequenceTracker(np.array([0]), (KIND_TRADE,))
    last = _table(1, 1)
    ids = [100, 101, 9_000_000_000_000_000_000, 102, 103, 114]
    recs = _recs([(0, KIND_TRADE, s) for s in ids])
    kept, gaps = t.check(recs, last)
    assert kept == len(ids)
    assert gaps["size"].tolist() == [-1.0, 10.0]
    assert gaps["sequence"].tolist() == [9_000_000_000_000_000_000, 114]
    assert missed(gaps) == 10
    assert last[0, 0] == 114
