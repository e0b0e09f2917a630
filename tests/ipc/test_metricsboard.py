"""The metrics board kernel against its pure-Python twin, and the ring's publish stamps."""

from __future__ import annotations

import os

import numpy as np

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_HEARTBEAT,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_TRADE,
    empty_records,
)
from fairfeed.hotpath.metrics import (
    BOUNDS_NS,
    D_MARK,
    HOP_KERNEL_KAFKA,
    HOP_RECEIVE_RING,
    HOP_RING_KERNEL,
    N_BUCKETS,
    N_DERIV,
    N_HOPS,
    N_MISC,
    batch_done_nb,
    batch_done_reference,
    update_derivatives_nb,
    update_derivatives_reference,
    update_metrics_nb,
    update_metrics_reference,
    warm_metrics,
)
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.ipc.ring import STAMPS, Ring


def _arrays(n_inst=3, n_src=4):
    return (
        np.zeros((n_src, N_HOPS, N_BUCKETS), np.uint64),
        np.zeros((n_src, N_HOPS)),
        np.zeros((n_src, N_HOPS), np.uint64),
        np.full((n_inst, n_src), np.nan),
        np.zeros((n_inst, n_src)),
        np.zeros((n_inst, n_src)),
        np.zeros(n_src, np.uint8),
    )


def test_kernel_matches_reference_on_random_batches() -> None:
    rng = np.random.default_rng(7)
    table = np.array([[0, 1, -1], [2, -1, 3]], np.int32)
    n = 500
    recs = empty_records(n)
    recs["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK, KIND_HEARTBEAT], n)
    recs["provider"] = rng.integers(0, 3, n)
    recs["venue"] = rng.integers(0, 3, n)
    recs["instrument"] = rng.integers(0, 4, n)
    recs["price"] = rng.uniform(90, 110, n)
    base = 1_700_000_000_000_000_000
    recs["ts_exchange"] = np.where(rng.random(n) < 0.2, 0, base + rng.integers(0, 10**9, n))
    recs["ts_provider"] = np.where(
        rng.random(n) < 0.3, 0, recs["ts_exchange"] + rng.integers(-(10**6), 10**8, n)
    )
    recs["ts_receive"] = base + 2 * 10**9 + rng.integers(0, 10**9, n)
    ends = np.zeros(STAMPS, np.int64)
    nss = np.zeros(STAMPS, np.int64)
    count = 2000  # wrapped: the window is the last STAMPS writes
    head = 0
    for w in range(count):
        head += int(rng.integers(0, 3))
        ends[w % STAMPS] = head
        nss[w % STAMPS] = base + 3 * 10**9 + w
    tail0 = head - n - 20
    for stamp_count in (count, -1):
        a, b = _arrays(), _arrays()
        args = (recs, n, table, ends, nss, stamp_count, tail0, base + 4 * 10**9, BOUNDS_NS)
        ua = update_metrics_nb(*args, *a)
        ub = update_metrics_reference(*args, *b)
        assert ua == ub
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, equal_nan=True)
        assert a[0][:, HOP_RING_KERNEL].sum() > 0 if stamp_count > 0 else a[0].sum() > 0


def test_batch_done_kernel_matches_reference() -> None:
    # every bucket edge, either side of it, beyond the last bound, and zero
    times = [0, 1, *BOUNDS_NS.tolist(), *(BOUNDS_NS + 1).tolist(), 10**12]
    got = (np.zeros(N_BUCKETS, np.uint64), np.zeros(1), np.zeros(N_MISC, np.uint64))
    want = (np.zeros(N_BUCKETS, np.uint64), np.zeros(1), np.zeros(N_MISC, np.uint64))
    for t in times:
        batch_done_nb(t, BOUNDS_NS, *got)
        batch_done_reference(t, BOUNDS_NS, *want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[0].sum() == len(times)


def test_derivatives_kernel_matches_reference_and_the_last_record_wins() -> None:
    rng = np.random.default_rng(11)
    table = np.array([[0, 1, -1], [2, -1, 3]], np.int32)
    n = 600
    recs = empty_records(n)
    recs["kind"] = rng.choice([KIND_TRADE, KIND_HEARTBEAT, *range(KIND_MARK, KIND_LIQUIDATION + 1)],
                              n)  # fmt: skip
    recs["provider"] = rng.integers(0, 3, n)
    recs["venue"] = rng.integers(0, 3, n)
    recs["instrument"] = rng.integers(0, 4, n)
    recs["price"] = rng.uniform(90, 110, n)
    recs["size"] = rng.uniform(0, 5, n)
    recs["reserved"] = rng.integers(1_700_000_000, 1_800_000_000, n)

    def arrays():
        return np.full((N_DERIV, 3, 4), np.nan), np.zeros((3, 4), np.uint64), np.zeros((3, 4))

    a, b = arrays(), arrays()
    update_derivatives_nb(recs, n, table, *a)
    update_derivatives_reference(recs, n, table, *b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[1].sum() > 0 and not np.isnan(a[0][D_MARK]).all()
    # the last mark of a stream is the one kept
    i, p, v = 1, 0, 1
    mine = recs[(recs["kind"] == KIND_MARK) & (recs["instrument"] == i) & (recs["provider"] == p)
                & (recs["venue"] == v)]  # fmt: skip
    assert a[0][D_MARK, i, table[p, v]] == mine["price"][-1]
    # market and health records leave everything as it was
    c = arrays()
    update_derivatives_nb(recs[np.isin(recs["kind"], (KIND_TRADE, KIND_HEARTBEAT))], 0, table, *c)
    assert np.isnan(c[0]).all() and c[1].sum() == 0


def test_ring_stamps_time_the_ring_hops() -> None:
    warm_metrics()
    name = f"fftest-{os.getpid()}-mring"
    ring = Ring.create(name, 64)
    board = MetricsBoard.create(name + "b", 1, 1)
    try:
        recs = empty_records(4)
        recs["kind"] = KIND_TRADE
        recs["price"] = (1.0, 2.0, 3.0, 4.0)
        recs["ts_receive"] = 1  # ages ago: receive -> ring lands in +Inf
        for k in (1, 3):
            assert ring.write(recs[:k]) == k
        assert ring.stamp_count == 2
        buf = empty_records(16)
        tail0 = ring.read_count
        k = ring.read_into(buf)
        now = int(ring.stamp_ns[1]) + 5_000
        board.update(buf[:k], np.zeros((1, 1), np.int32), now, ring, tail0)
        assert board.take_seen().tolist() == [0]
        assert board.take_seen().tolist() == []
        h = board.hist[0]
        assert h[HOP_RECEIVE_RING, N_BUCKETS - 1] == 4
        assert h[HOP_RING_KERNEL].sum() == 4
        assert board.price[0, 0] == 3.0
        board.observe(HOP_KERNEL_KAFKA, np.array([0]), np.array([0.002]))
        assert h[HOP_KERNEL_KAFKA].sum() == 1
        board.batch_done(1_000_000)
        assert board.batch_hist.sum() == 1
        board.anomaly_event(3, 0, True)
        board.anomaly_event(3, -1, True)
        board.anomaly_event(3, 0, False)
        assert board.anomaly_open[3].tolist() == [0, 1]
        assert board.anomaly_events[3].tolist() == [1, 1]
    finally:
        for seg in (ring, board):
            seg.close()
            seg.unlink()
