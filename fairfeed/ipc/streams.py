"""Per-stream activity board in shared memory: messages and last receive time per
(instrument, source), written by the compute process, read by the supervisor (``ctl list``,
later the metrics). Sized once for the registry's capacities.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.hotpath.records import MAX_MARKET_KIND
from fairfeed.ipc.shm import attach_segment, create_segment


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


class StreamBoard:
    """``count[instrument, source]`` and ``last_ts[instrument, source]`` in shared memory."""

    def __init__(self, shm, n_instruments: int, n_sources: int, *, owner: bool) -> None:
        self._shm = shm
        self.name = shm.name
        self.owner = owner
        shape = (n_instruments, n_sources)
        self.count = np.ndarray(shape, np.uint64, shm.buf)
        self.last_ts = np.ndarray(shape, np.int64, shm.buf, self.count.nbytes)

    @staticmethod
    def size(n_instruments: int, n_sources: int) -> int:
        return n_instruments * n_sources * 16

    @classmethod
    def create(cls, name: str, n_instruments: int, n_sources: int) -> StreamBoard:
        shm = create_segment(name, cls.size(n_instruments, n_sources))
        board = cls(shm, n_instruments, n_sources, owner=True)
        board.count[:] = 0
        board.last_ts[:] = 0
        return board

    @classmethod
    def attach(cls, name: str, n_instruments: int, n_sources: int) -> StreamBoard:
        return cls(attach_segment(name), n_instruments, n_sources, owner=False)

    def update(self, records: np.ndarray, source_table: np.ndarray) -> None:
        count_streams_nb(records, len(records), source_table, self.count, self.last_ts)

    def close(self) -> None:
        self.count = self.last_ts = None  # type: ignore[assignment]
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()
