"""Plausibility of records: one absurd time stamp must not feed the latency and clock-skew
detectors (a Binance trade with ``"T": "2024"`` decodes to a time in 1970), one absurd price or
size must not move a fair price or a volume (a size of 9e18 outweighs every real trade).

A record's ``ts_exchange`` or ``ts_provider`` more than ``bound`` ahead of its ``ts_receive``
(our own clock at the socket read), or before 2010, is not believed: it is set to 0 (unknown),
as for a venue that sends no time, and counted. The record itself, its price and size, is kept.
Times in the past are only floored, not bounded by ``ts_receive``: a replayed recording
legitimately carries yesterday's (or 2021's) venue times with today's receive times.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import KIND_FUNDING, KIND_TRADE, MAX_DATA_KIND

# A venue clock this far from ours is broken, not late: a day covers any backlog or snapshot
# we publish and any clock error worth a clock_skew event instead.
MAX_CLOCK_DISTANCE_NS = 24 * 3600 * 1_000_000_000
EARLIEST_NS = 1_262_304_000 * 1_000_000_000  # 2010-01-01: before any venue we read traded


@njit(cache=True)
def clear_implausible_times_nb(records, n, bound):  # pragma: no cover
    """Zero the venue times of ``records[:n]`` more than ``bound`` ns ahead of ``ts_receive``
    or before EARLIEST_NS; returns how many records had one."""
    bad = 0
    for i in range(n):
        r = records[i]
        latest = r.ts_receive + bound
        hit = False
        t = r.ts_exchange
        if t != 0 and (t > latest or t < EARLIEST_NS):
            records[i].ts_exchange = 0
            hit = True
        t = r.ts_provider
        if t != 0 and (t > latest or t < EARLIEST_NS):
            records[i].ts_provider = 0
            hit = True
        if hit:
            bad += 1
    return bad


def clear_implausible_times(records: np.ndarray, bound: int = MAX_CLOCK_DISTANCE_NS) -> int:
    """:func:`clear_implausible_times_nb` over the whole array."""
    if not len(records):
        return 0
    return int(clear_implausible_times_nb(records, len(records), np.int64(bound)))


# Beyond these no market we read has traded: BTC costs ~2.5e9 in VND, the largest meme-token
# supplies are ~4e17 units; one trade worth 1e15 quote units is more than a year of any venue.
MAX_PRICE = 1e12
MAX_SIZE = 1e18
MAX_NOTIONAL = 1e15
MAX_FUNDING_RATE = 1.0  # per funding interval: 100 %


@njit(cache=True)
def drop_implausible_values_nb(records, n):  # pragma: no cover
    """Drop the data records of ``records[:n]`` whose price or size is not finite, negative or
    beyond the bounds above, compacting the rest to the front; returns how many were kept.
    Health records (kinds above MAX_DATA_KIND) are always kept. The parsers already refuse
    what is not a number or not positive; this catches the absurd but well-formed."""
    m = 0
    for i in range(n):
        r = records[i]
        k = r.kind
        ok = True
        if KIND_TRADE <= k <= MAX_DATA_KIND:
            p = r.price
            q = r.size
            if k == KIND_FUNDING:  # price is a rate (may be negative), size the next one or NaN
                ok = abs(p) <= MAX_FUNDING_RATE and (q != q or abs(q) <= MAX_FUNDING_RATE)
            else:
                ok = 0.0 <= p <= MAX_PRICE and 0.0 <= q <= MAX_SIZE and p * q <= MAX_NOTIONAL
        if ok:
            if m != i:
                records[m] = records[i]
            m += 1
    return m


def drop_implausible_values(records: np.ndarray) -> int:
    """:func:`drop_implausible_values_nb` over the whole array: the records kept are
    ``records[:returned]``."""
    if not len(records):
        return 0
    return int(drop_implausible_values_nb(records, len(records)))
