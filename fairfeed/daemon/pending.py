"""A bounded FIFO of records an ingest worker holds back while its ring is full."""

from __future__ import annotations

import numpy as np

from fairfeed.core.records import RECORD_DTYPE, RECORD_SIZE
from fairfeed.ipc.ring import Ring

# Copied as opaque 64-byte items: numpy copies a structured dtype field by field (~20x slower).
_RAW = np.dtype((np.void, RECORD_SIZE))


class PendingRecords:
    """Records waiting for room in the ring, oldest first, in one preallocated array.

    Nothing grows: :meth:`push` keeps what fits and says how much; the caller counts the rest
    as dropped. The live records are ``buf[start:end]``; they are moved to the front only when a
    push would run past the end, so each record is copied at most twice on its way in.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pending capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.buf = np.zeros(capacity, RECORD_DTYPE)
        self._raw = self.buf.view(_RAW)
        self.start = self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def push(self, records: np.ndarray) -> int:
        """Append what fits of ``records`` after the ones held; returns how many were kept."""
        if records.dtype != RECORD_DTYPE:
            raise TypeError(f"pending records must have RECORD_DTYPE, got {records.dtype}")
        n = min(len(records), self.capacity - len(self))
        if n <= 0:
            return 0
        if self.end + n > self.capacity:
            held = len(self)
            self._raw[:held] = self._raw[self.start : self.end]  # numpy handles the overlap
            self.start, self.end = 0, held
        self._raw[self.end : self.end + n] = records[:n].view(_RAW)
        self.end += n
        return n

    def write_to(self, ring: Ring) -> int:
        """Publish the oldest held records that fit into ``ring``; returns how many."""
        k = ring.write(self.buf[self.start : self.end])
        self.start += k
        if self.start == self.end:
            self.start = self.end = 0
        return k

    def clear(self) -> int:
        """Forget every held record; returns how many there were."""
        n = len(self)
        self.start = self.end = 0
        return n
