"""The control block: one shared-memory segment of per-child counters and the fair-price board.

Each child owns one slot and is its only writer; the supervisor reads every slot (heartbeats,
progress, errors) and the board (latest fair price per instrument) for the live view. Values
are aligned 8-byte words written by a single process, so readers never see a torn value.
"""

from __future__ import annotations

import numpy as np

from fairfeed.core.counters import SLOT_WORDS, Slot
from fairfeed.ipc.shm import attach_segment, create_segment

_BOARD_FIELDS = 3  # price (f64 bits), ts_ns, n_sources


class ControlBlock:
    """Slots for ``n_slots`` children plus a board for ``n_instruments`` fair prices."""

    def __init__(self, shm, n_slots: int, n_instruments: int, *, owner: bool) -> None:
        self._shm = shm
        self.name = shm.name
        self.owner = owner
        self.n_slots = n_slots
        self.n_instruments = n_instruments
        self.slots = np.ndarray((n_slots, SLOT_WORDS), dtype=np.uint64, buffer=shm.buf)
        off = self.slots.nbytes
        self.fair_price = np.ndarray((n_instruments,), np.float64, shm.buf, off)
        off += self.fair_price.nbytes
        self.fair_ts = np.ndarray((n_instruments,), np.int64, shm.buf, off)
        off += self.fair_ts.nbytes
        self.fair_sources = np.ndarray((n_instruments,), np.int64, shm.buf, off)

    @staticmethod
    def size(n_slots: int, n_instruments: int) -> int:
        return n_slots * SLOT_WORDS * 8 + n_instruments * _BOARD_FIELDS * 8

    @classmethod
    def create(cls, name: str, n_slots: int, n_instruments: int) -> ControlBlock:
        shm = create_segment(name, cls.size(n_slots, n_instruments))
        block = cls(shm, n_slots, n_instruments, owner=True)
        block.slots[:] = 0
        block.fair_price[:] = np.nan
        block.fair_ts[:] = 0
        block.fair_sources[:] = 0
        return block

    @classmethod
    def attach(cls, name: str, n_slots: int, n_instruments: int) -> ControlBlock:
        return cls(attach_segment(name), n_slots, n_instruments, owner=False)

    def get(self, slot: int, field: Slot) -> int:
        return int(self.slots[slot, field])

    def set(self, slot: int, field: Slot, value: int) -> None:
        self.slots[slot, field] = value

    def add(self, slot: int, field: Slot, value: int = 1) -> None:
        self.slots[slot, field] += np.uint64(value)

    def reset_slot(self, slot: int) -> None:
        """Zero the liveness fields before a (re)spawn; cumulative counters are kept."""
        self.slots[slot, Slot.HEARTBEAT] = 0
        self.slots[slot, Slot.READY] = 0
        self.slots[slot, Slot.PID] = 0
        self.slots[slot, Slot.CONNECTED] = 0

    def close(self) -> None:
        self.slots = self.fair_price = self.fair_ts = self.fair_sources = None  # type: ignore[assignment]
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()
