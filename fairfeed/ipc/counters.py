"""Counters backed by a child's slot in the shared control block."""

from __future__ import annotations

from fairfeed.core.counters import Counters, Slot
from fairfeed.ipc.control import ControlBlock


class SlotCounters(Counters):
    """Counts into ``control.slots[slot]``; the supervisor reads them for status and metrics."""

    def __init__(self, control: ControlBlock, slot: int) -> None:
        self._row = control.slots[slot]

    def add(self, field: Slot, n: int = 1) -> None:
        if n >= 0:
            self._row[field] += n
        else:  # uint64 words: subtract rather than add a negative Python int
            self._row[field] -= -n

    def set(self, field: Slot, value: int) -> None:
        self._row[field] = value

    def __getitem__(self, field: Slot) -> int:
        return int(self._row[field])
