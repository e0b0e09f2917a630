"""Per-stream activity board in shared memory: messages and last receive time per
(instrument, source), written by the compute process, read by the supervisor (``ctl list``,
later the metrics). Sized once for the registry's capacities.
"""

from __future__ import annotations

import numpy as np

from fairfeed.hotpath.streams import count_streams_nb
from fairfeed.ipc.shm import attach_segment, create_segment


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
