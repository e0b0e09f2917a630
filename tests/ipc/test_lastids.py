"""The shared last-id table: what a restarted worker's tracker finds there."""

from __future__ import annotations

import os
import uuid

import numpy as np

from fairfeed.core.records import KIND_TRADE, RECORD_DTYPE
from fairfeed.hotpath.sequence import SequenceTracker
from fairfeed.ipc.lastids import LastIds


def _trades(inst: int, venue: int, seqs: list[int]) -> np.ndarray:
    r = np.zeros(len(seqs), RECORD_DTYPE)
    r["instrument"], r["venue"], r["kind"], r["sequence"] = inst, venue, KIND_TRADE, seqs
    return r


def test_a_new_tracker_on_the_attached_table_reports_what_was_missed() -> None:
    name = f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    owner = LastIds.create(name, 4, 3)
    try:
        assert (owner.table == -1).all()  # a fresh daemon: nothing to compare with, no gap
        venues = np.array([-1, 2])  # venue 1 is source 2 of this provider
        # the first worker (one attach per process: the resource tracker counts attaches)
        SequenceTracker(venues, (KIND_TRADE,)).check(_trades(3, 1, [40, 41, 42]), owner.table)
        restarted = LastIds.attach(name, 4, 3)
        recs = _trades(3, 1, [41, 42, 50, 51])  # a repeat of what was published, then new ids
        kept, gaps = SequenceTracker(venues, (KIND_TRADE,)).check(recs, restarted.table)
        assert recs["sequence"][:kept].tolist() == [50, 51]
        assert [(int(g["sequence"]), int(g["size"])) for g in gaps] == [(50, 7)]
        assert owner.table[3, 2] == 51
        restarted.clear(3, 2)  # unsubscribed (or subscribed again): starts afresh
        kept, gaps = SequenceTracker(venues, (KIND_TRADE,)).check(
            _trades(3, 1, [900]), restarted.table
        )
        assert kept == 1 and len(gaps) == 0
        restarted.close()
    finally:
        owner.close()
        owner.unlink()


def test_a_local_table_grows_with_the_registry() -> None:
    ids = LastIds.local(1, 1)
    ids.table[0, 0] = 7
    ids.ensure(3, 2)
    assert ids.table.shape == (3, 2) and ids.table[0, 0] == 7 and ids.table[2, 1] == -1
