"""Deduplication of keyed records across the two sessions of a planned switch.

During a make-before-break switch (:mod:`fairfeed.providers.wsbase`) the old and the new session
of a connection both deliver. For a protocol whose records carry a unique key but no number
spanning connections (CoinAPI: a hash of the trade uuid in ``reserved``), the first arrival of
each (instrument, venue, key) is published and any later one is dropped. Records with key 0 have
no key and always pass.

The remembered keys are bounded (``cap``, oldest forgotten first): a repeat comes from the lagging
session within about one round trip of the first arrival, so the bound limits how far the two
sessions may drift apart, not how long the switch may last.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CAP = 1 << 16


def overlap_keys(records: np.ndarray, field: str) -> np.ndarray:
    """One uint64 per record: instrument (low 16 bits), venue and the 32-bit ``field``."""
    stream = (records["instrument"].astype(np.uint64) << np.uint64(16)) | records["venue"]
    return (stream << np.uint64(32)) | records[field].astype(np.uint32)


class OverlapFilter:
    """The keys published while a switch lasts; shared by its two sessions."""

    __slots__ = ("cap", "ended", "field", "keys", "n")

    def __init__(self, field: str, cap: int = DEFAULT_CAP) -> None:
        self.field = field
        self.cap = cap
        self.keys = np.zeros(cap, np.uint64)
        self.n = 0
        self.ended = False  # the switch is over: its sessions stop filtering

    def filter(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` without the keyed records already published during the overlap (order
        kept); remembers the keys of what it returns."""
        keyed = batch[self.field] != 0
        if not keyed.any():
            return batch
        keys = overlap_keys(batch, self.field)
        seen = keyed & np.isin(keys, self.keys[: self.n])
        fresh = np.flatnonzero(keyed & ~seen)
        # a key twice within the batch: the first one wins
        _, first = np.unique(keys[fresh], return_index=True)
        if len(first) < len(fresh):
            seen[np.setdiff1d(fresh, fresh[first], assume_unique=True)] = True
            fresh = fresh[np.sort(first)]
        self._remember(keys[fresh])
        return batch[~seen] if seen.any() else batch

    def _remember(self, new: np.ndarray) -> None:
        m = len(new)
        if m >= self.cap:
            self.keys[:] = new[-self.cap :]
            self.n = self.cap
            return
        if self.n + m > self.cap:  # forget the oldest
            keep = self.cap - m
            self.keys[:keep] = self.keys[self.n - keep : self.n]
            self.n = keep
        self.keys[self.n : self.n + m] = new
        self.n += m

    def end(self) -> None:
        """The switch is over: forget every key."""
        self.ended = True
        self.n = 0
