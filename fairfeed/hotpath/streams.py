"""Per-stream activity kernel: messages and last receive time per (instrument, source).

The board it writes lives in shared memory (``fairfeed.ipc.streams``).
"""

from __future__ import annotations

from numba import njit

from fairfeed.core.records import MAX_MARKET_KIND


@njit(cache=True)
def count_streams_nb(records, n, source_table, count, last_ts):  # pragma: no cover - jitted
    """Count market records per (instrument, source) and keep the latest ``ts_receive``.

    Records whose instrument or source is unknown (or outside the board) are ignored.
    Reference: :func:`count_streams_reference`.
    """
    n_inst = count.shape[0]
    n_src = count.shape[1]
    n_prov = source_table.shape[0]
    n_ven = source_table.shape[1]
    for j in range(n):
        r = records[j]
        if r.kind == 0 or r.kind > MAX_MARKET_KIND:
            continue
        i = r.instrument
        p = r.provider
        v = r.venue
        if i >= n_inst or p >= n_prov or v >= n_ven:
            continue
        s = source_table[p, v]
        if s < 0 or s >= n_src:
            continue
        count[i, s] += 1
        if r.ts_receive > last_ts[i, s]:
            last_ts[i, s] = r.ts_receive


def count_streams_reference(records, n, source_table, count, last_ts) -> None:
    """Plain-Python twin of :func:`count_streams_nb`."""
    for r in records[:n]:
        if r["kind"] == 0 or r["kind"] > MAX_MARKET_KIND:
            continue
        i, p, v = int(r["instrument"]), int(r["provider"]), int(r["venue"])
        if i >= count.shape[0] or p >= source_table.shape[0] or v >= source_table.shape[1]:
            continue
        s = int(source_table[p, v])
        if s < 0 or s >= count.shape[1]:
            continue
        count[i, s] += 1
        last_ts[i, s] = max(int(last_ts[i, s]), int(r["ts_receive"]))
