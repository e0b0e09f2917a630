"""Plausibility of records: one absurd time stamp must not feed the latency and clock-skew
detectors (a Binance trade with ``"T": "2024"`` decodes to a time in 1970), one absurd price or
size must not move a fair price or a volume (a size of 9e18 outweighs every real trade).

A record's ``ts_exchange`` or ``ts_provider`` more than ``bound`` ahead of its ``ts_receive``
(our own clock at the socket read), or before 2010, is not believed: it is set to 0 (unknown),
as for a venue that sends no time, and counted; the record is kept. Times in the past are only
floored, not bounded by ``ts_receive``: a replayed recording legitimately carries yesterday's
(or 2021's) venue times with today's receive times. A data record whose price or size is beyond
any market we read (the bounds below) is dropped and counted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import KIND_FUNDING, KIND_TRADE, MAX_DATA_KIND

# A venue clock this far from ours is broken, not late: a day covers any backlog or snapshot
# we publish and any clock error worth a clock_skew event instead.
MAX_CLOCK_DISTANCE_NS = 24 * 3600 * 1_000_000_000
EARLIEST_NS = 1_262_304_000 * 1_000_000_000  # 2010-01-01: before any venue we read traded


# Beyond these no market we read has traded: BTC costs ~2.5e9 in VND, the largest meme-token
# supplies are ~4e17 units; one trade worth 1e15 quote units is more than a year of any venue.
MAX_PRICE = 1e12
MAX_SIZE = 1e18
MAX_NOTIONAL = 1e15
MAX_FUNDING_RATE = 1.0  # per funding interval: 100 %


@njit(cache=True)
def check_plausible_nb(records, n, bound):  # pragma: no cover
    """One pass over ``records[:n]``: zero venue times more than ``bound`` ns ahead of
    ``ts_receive`` or before EARLIEST_NS (the record is kept), and drop data records whose price
    or size is not finite, negative or beyond the bounds above (the rest compacted to the
    front). Health records (kinds above MAX_DATA_KIND) are always kept. The parsers already
    refuse what is not a number or not positive; this catches the absurd but well-formed.
    Returns (records kept, records with a cleared time, records dropped)."""
    m = 0
    bad_times = 0
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
            if hit:
                bad_times += 1
            if m != i:
                records[m] = records[i]
            m += 1
    return m, bad_times, n - m


def check_plausible(
    records: np.ndarray, bound: int = MAX_CLOCK_DISTANCE_NS
) -> tuple[int, int, int]:
    """:func:`check_plausible_nb` over the whole array: ``(kept, times cleared, dropped)``;
    the records kept are ``records[:kept]``."""
    if not len(records):
        return 0, 0, 0
    kept, times, dropped = check_plausible_nb(records, len(records), np.int64(bound))
    return int(kept), int(times), int(dropped)
