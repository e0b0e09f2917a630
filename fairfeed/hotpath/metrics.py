"""Metrics kernels: latency histograms per source and hop, latest price per stream, latest
derivatives values and liquidations per stream.

The arrays they fill live in shared memory (``fairfeed.ipc.metricsboard``, where the hops and
buckets are described); the supervisor exports them at scrape time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    MAX_MARKET_KIND,
    empty_records,
)

HOPS = (
    "exchange_provider",
    "provider_receive",
    "receive_ring",
    "ring_kernel",
    "kernel_kafka",
    "kafka_ack",
)
(
    HOP_EXCHANGE_PROVIDER,
    HOP_PROVIDER_RECEIVE,
    HOP_RECEIVE_RING,
    HOP_RING_KERNEL,
    HOP_KERNEL_KAFKA,
    HOP_KAFKA_ACK,
) = range(6)
N_HOPS = len(HOPS)
BOUNDS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BOUNDS_NS = np.array([round(b * 1e9) for b in BOUNDS_S], np.int64)
N_BUCKETS = len(BOUNDS_S) + 1  # + Inf
N_ANOMALY_KINDS = 32

# misc words
M_BATCHES = 0  # batches processed
M_KERNEL_NS = 1  # ns spent in the kernels, total
M_UNTIMED = 2  # records read whose publish stamp was already overwritten
N_MISC = 8

# Rows of the derivatives values array ``deriv[row, instrument, source]`` (NaN = none yet).
D_MARK, D_INDEX, D_FUNDING_RATE, D_NEXT_FUNDING, D_OPEN_INTEREST = range(5)
N_DERIV = 5


@njit(cache=True, inline="always")
def _bucket(d, bounds):  # pragma: no cover - jitted
    b = 0
    nb = bounds.shape[0]
    while b < nb and d > bounds[b]:
        b += 1
    return b


@njit(cache=True)
def update_metrics_nb(
    records, n, source_table, stamp_end, stamp_ns, stamp_count, tail0, now_ns, bounds,
    hist, hsum, skew, price, bid, ask, touched,
):  # pragma: no cover - jitted  # fmt: skip
    """Latency histograms and latest prices for one batch of ``n`` records read from a ring.

    ``tail0`` is the ring's read counter before the batch (record ``j`` is ring record
    ``tail0 + j``); its publish time is that of the first stamp whose end exceeds it. With
    ``stamp_count < 0`` (records not from a ring) the ring hops are skipped. Returns how many
    records went untimed because their stamp was overwritten; ``touched[s]`` is set to 1 for
    every source ``s`` in the batch. Reference:
    :func:`update_metrics_reference`.
    """
    n_inst = price.shape[0]
    n_src = price.shape[1]
    n_prov = source_table.shape[0]
    n_ven = source_table.shape[1]
    n_st = stamp_end.shape[0]
    # first stamp covering record tail0: binary search over the valid window (ends increase)
    lo = stamp_count - n_st
    if lo < 0:
        lo = 0
    hi = stamp_count
    if stamp_count >= 0:
        while lo < hi:
            mid = (lo + hi) // 2
            if stamp_end[mid % n_st] > tail0:
                hi = mid
            else:
                lo = mid + 1
    k = lo
    mask = n_st - 1  # n_st is a power of two (ring.STAMPS)
    cur_end = np.int64(tail0)  # records below cur_end have publish time cur_pub
    cur_pub = np.int64(-1)
    untimed = 0
    for j in range(n):
        r = records[j]
        kind = r.kind
        if kind == 0 or kind > MAX_MARKET_KIND:
            continue
        p = r.provider
        v = r.venue
        if p >= n_prov or v >= n_ven:
            continue
        s = source_table[p, v]
        if s < 0 or s >= n_src:
            continue
        touched[s] = 1
        i = r.instrument
        if i < n_inst:
            if kind == KIND_TRADE:
                price[i, s] = r.price
            elif kind == KIND_BID:
                bid[i, s] = r.price
                if ask[i, s] > 0:
                    price[i, s] = 0.5 * (r.price + ask[i, s])
            elif kind == KIND_ASK:
                ask[i, s] = r.price
                if bid[i, s] > 0:
                    price[i, s] = 0.5 * (bid[i, s] + r.price)
        te = r.ts_exchange
        tp = r.ts_provider
        tr = r.ts_receive
        if te > 0 and tp > 0:
            _observe(tp - te, s, 0, bounds, hist, hsum, skew)
        base = tp if tp > 0 else te
        if base > 0 and tr > 0:
            _observe(tr - base, s, 1, bounds, hist, hsum, skew)
        if stamp_count >= 0:
            pos = tail0 + j
            if pos >= cur_end:  # next write's stamp (stamps are per write, not per record)
                while k < stamp_count and stamp_end[k & mask] <= pos:
                    k += 1
                if k < stamp_count:
                    cur_end = stamp_end[k & mask]
                    cur_pub = stamp_ns[k & mask]
                else:
                    cur_end = pos + 1
                    cur_pub = -1
            if cur_pub >= 0:
                if tr > 0:
                    _observe(cur_pub - tr, s, 2, bounds, hist, hsum, skew)
                _observe(now_ns - cur_pub, s, 3, bounds, hist, hsum, skew)
            else:
                untimed += 1
    return untimed


@njit(cache=True, inline="always")
def _observe(d, s, hop, bounds, hist, hsum, skew):  # pragma: no cover - jitted
    if d < 0:
        skew[s, hop] += 1
        d = 0
    hist[s, hop, _bucket(d, bounds)] += 1
    hsum[s, hop] += d * 1e-9


@njit(cache=True)
def observe_many_nb(sources, seconds, hop, bounds, hist, hsum, skew):  # pragma: no cover
    """Add latencies (seconds) of one hop, one per source id in ``sources``."""
    for j in range(sources.shape[0]):
        s = sources[j]
        if 0 <= s < hist.shape[0]:
            _observe(np.int64(seconds[j] * 1e9), s, hop, bounds, hist, hsum, skew)


@njit(cache=True)
def batch_done_nb(elapsed_ns, bounds, batch_hist, batch_sum, misc):  # pragma: no cover - jitted
    """Count one batch that took ``elapsed_ns`` in the kernels: its bucket, the sum (seconds),
    the batch count and the total ns. One call instead of four numpy scalar updates (a few µs
    every compute pass). Reference: ``batch_done_reference``."""
    batch_hist[_bucket(elapsed_ns, bounds)] += 1
    batch_sum[0] += elapsed_ns * 1e-9
    misc[M_BATCHES] += 1
    misc[M_KERNEL_NS] += elapsed_ns


def batch_done_reference(elapsed_ns, bounds, batch_hist, batch_sum, misc) -> None:
    """Slow reference of :func:`batch_done_nb`."""
    batch_hist[int(np.searchsorted(bounds, elapsed_ns, side="left"))] += np.uint64(1)
    batch_sum[0] += elapsed_ns * 1e-9
    misc[M_BATCHES] += np.uint64(1)
    misc[M_KERNEL_NS] += np.uint64(elapsed_ns)


def update_metrics_reference(
    records, n, source_table, stamp_end, stamp_ns, stamp_count, tail0, now_ns, bounds,
    hist, hsum, skew, price, bid, ask, touched,
) -> int:  # fmt: skip
    """Plain-Python twin of :func:`update_metrics_nb` (the test oracle)."""
    n_st = len(stamp_end)
    stamps = []  # (end, ns) of the valid window, oldest first
    if stamp_count >= 0:
        for w in range(max(0, stamp_count - n_st), stamp_count):
            stamps.append((int(stamp_end[w % n_st]), int(stamp_ns[w % n_st])))

    def obs(d, s, hop):
        if d < 0:
            skew[s, hop] += 1
            d = 0
        b = int(np.searchsorted(bounds, d, side="left"))
        hist[s, hop, b] += 1
        hsum[s, hop] += d * 1e-9

    untimed = 0
    for j, r in enumerate(records[:n]):
        kind = int(r["kind"])
        if kind == 0 or kind > MAX_MARKET_KIND:
            continue
        p, v, i = int(r["provider"]), int(r["venue"]), int(r["instrument"])
        if p >= source_table.shape[0] or v >= source_table.shape[1]:
            continue
        s = int(source_table[p, v])
        if s < 0 or s >= price.shape[1]:
            continue
        touched[s] = 1
        if i < price.shape[0]:
            if kind == KIND_TRADE:
                price[i, s] = r["price"]
            elif kind == KIND_BID:
                bid[i, s] = r["price"]
                if ask[i, s] > 0:
                    price[i, s] = 0.5 * (r["price"] + ask[i, s])
            else:
                ask[i, s] = r["price"]
                if bid[i, s] > 0:
                    price[i, s] = 0.5 * (bid[i, s] + r["price"])
        te, tp, tr = int(r["ts_exchange"]), int(r["ts_provider"]), int(r["ts_receive"])
        if te > 0 and tp > 0:
            obs(tp - te, s, 0)
        base = tp if tp > 0 else te
        if base > 0 and tr > 0:
            obs(tr - base, s, 1)
        if stamp_count >= 0:
            pub = next((ns for end, ns in stamps if end > tail0 + j), None)
            if pub is None:
                untimed += 1
                continue
            if tr > 0:
                obs(pub - tr, s, 2)
            obs(now_ns - pub, s, 3)
    return untimed


@njit(cache=True)
def update_derivatives_nb(
    records, n, source_table, deriv, liquidations, liquidated
):  # pragma: no cover - jitted
    """Latest derivatives values and liquidation counts of ``records[:n]``, in order (the last
    record of a stream wins): mark and index ``price``, funding rate ``price`` and next funding
    time ``reserved`` (seconds), open interest ``size``; a liquidation adds 1 and its ``size``.
    Other kinds and unknown streams are skipped. Reference: :func:`update_derivatives_reference`.
    """
    n_inst = deriv.shape[1]
    n_src = deriv.shape[2]
    for j in range(n):
        r = records[j]
        kind = r.kind
        if kind < KIND_MARK or kind > KIND_LIQUIDATION:
            continue
        p = r.provider
        v = r.venue
        i = r.instrument
        if p >= source_table.shape[0] or v >= source_table.shape[1] or i >= n_inst:
            continue
        s = source_table[p, v]
        if s < 0 or s >= n_src:
            continue
        if kind == KIND_MARK:
            deriv[D_MARK, i, s] = r.price
        elif kind == KIND_INDEX:
            deriv[D_INDEX, i, s] = r.price
        elif kind == KIND_FUNDING:
            deriv[D_FUNDING_RATE, i, s] = r.price
            deriv[D_NEXT_FUNDING, i, s] = r.reserved
        elif kind == KIND_OPEN_INTEREST:
            deriv[D_OPEN_INTEREST, i, s] = r.size
        else:
            liquidations[i, s] += 1
            liquidated[i, s] += r.size


def update_derivatives_reference(records, n, source_table, deriv, liquidations, liquidated):
    """Plain-Python twin of :func:`update_derivatives_nb` (the test oracle)."""
    rows = {KIND_MARK: (D_MARK, "price"), KIND_INDEX: (D_INDEX, "price"),
            KIND_OPEN_INTEREST: (D_OPEN_INTEREST, "size")}  # fmt: skip
    for r in records[:n]:
        kind = int(r["kind"])
        p, v, i = int(r["provider"]), int(r["venue"]), int(r["instrument"])
        if not KIND_MARK <= kind <= KIND_LIQUIDATION:
            continue
        if p >= source_table.shape[0] or v >= source_table.shape[1] or i >= deriv.shape[1]:
            continue
        s = int(source_table[p, v])
        if not 0 <= s < deriv.shape[2]:
            continue
        if kind in rows:
            row, field = rows[kind]
            deriv[row, i, s] = r[field]
        elif kind == KIND_FUNDING:
            deriv[D_FUNDING_RATE, i, s] = r["price"]
            deriv[D_NEXT_FUNDING, i, s] = r["reserved"]
        else:
            liquidations[i, s] += 1
            liquidated[i, s] += r["size"]


_NO_STAMPS = np.zeros(1, np.int64)


def warm_metrics() -> None:
    """Compile (or load) this module's kernels in the supervisor before fork."""
    stamps = 1024  # any power of two, as the rings' publish stamps
    recs = empty_records(3)
    recs["kind"] = (KIND_TRADE, KIND_BID, KIND_ASK)
    recs["price"] = (100.0, 99.0, 101.0)
    recs["ts_exchange"], recs["ts_provider"], recs["ts_receive"] = 1, 2, 3
    table = np.zeros((1, 1), np.int32)
    price = np.full((1, 1), np.nan)
    hist = np.zeros((1, N_HOPS, N_BUCKETS), np.uint64)
    hsum = np.zeros((1, N_HOPS))
    skew = np.zeros((1, N_HOPS), np.uint64)
    end = np.zeros(stamps, np.int64)
    end[0] = 3
    update_metrics_nb(
        recs, 3, table, end, np.zeros(stamps, np.int64), 1, 0, 10, BOUNDS_NS,
        hist, hsum, skew, price, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1, np.uint8),
    )  # fmt: skip
    update_metrics_nb(
        recs, 3, table, _NO_STAMPS, _NO_STAMPS, -1, 0, 10, BOUNDS_NS,
        hist, hsum, skew, price, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1, np.uint8),
    )  # fmt: skip
    observe_many_nb(np.zeros(1, np.int64), np.zeros(1), 4, BOUNDS_NS, hist, hsum, skew)
    batch_done_nb(
        1, BOUNDS_NS, np.zeros(N_BUCKETS, np.uint64), np.zeros(1), np.zeros(N_MISC, np.uint64)
    )
    recs["kind"] = (KIND_MARK, KIND_FUNDING, KIND_LIQUIDATION)
    deriv = np.full((N_DERIV, 1, 1), np.nan)
    liq = np.zeros((1, 1), np.uint64)
    update_derivatives_nb(recs, 3, table, deriv, liq, np.zeros((1, 1)))
    assert liq[0, 0] == 1 and deriv[D_MARK, 0, 0] == 100.0
