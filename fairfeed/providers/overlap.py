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
    """The keys published while a switch lasts; shared by its two sessions.

    Looked up in a sorted copy (``searchsorted``: a batch costs O(m log n) to check and one
    copy of the keys to insert, not a sort of all of them); ``keys[:n]`` keeps arrival order
    for forgetting the oldest."""

    __slots__ = ("cap", "ended", "field", "keys", "n", "sessions", "sorted")

    def __init__(self, field: str, cap: int = DEFAULT_CAP) -> None:
        self.field = field
        self.cap = cap
        self.keys = np.zeros(cap, np.uint64)
        self.n = 0
        self.sorted = np.zeros(0, np.uint64)
        self.sessions = 0  # sessions delivering through this filter
        self.ended = False  # the switch is over: its sessions stop filtering

    def join(self) -> None:
        """One more session delivers through the filter."""
        self.sessions += 1

    def leave(self) -> None:
        """A session has ended: with one left there is no overlap any more."""
        self.sessions -= 1
        if self.sessions <= 1:
            self.end()

    def filter(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` without the keyed records already published during the overlap (order
        kept); remembers the keys of what it returns."""
        keyed = batch[self.field] != 0
        if not keyed.any():
            return batch
        keys = overlap_keys(batch, self.field)
        seen = keyed & self._known(keys)
        fresh = np.flatnonzero(keyed & ~seen)
        # a key twice within the batch: the first one wins
        _, first = np.unique(keys[fresh], return_index=True)
        if len(first) < len(fresh):
            seen[np.setdiff1d(fresh, fresh[first], assume_unique=True)] = True
            fresh = fresh[np.sort(first)]
        self._remember(keys[fresh])
        return batch[~seen] if seen.any() else batch

    def _known(self, keys: np.ndarray) -> np.ndarray:
        s = self.sorted
        if not len(s):
            return np.zeros(len(keys), np.bool_)
        pos = np.minimum(np.searchsorted(s, keys), len(s) - 1)
        return s[pos] == keys

    def _remember(self, new: np.ndarray) -> None:
        """Add ``new`` (unique, none known yet); past ``cap``, forget the oldest (a quarter at
        least, so the shift is rare)."""
        m, cap = len(new), self.cap
        if m >= cap:
            self.keys[:] = new[-cap:]
            self.n = cap
            self.sorted = np.sort(self.keys)
            return
        n = self.n
        if n + m > cap:
            k = min(n, max(n + m - cap, cap // 4))
            old = self.keys[:k]
            self.sorted = np.delete(self.sorted, np.searchsorted(self.sorted, old))
            self.keys[: n - k] = self.keys[k:n]
            n -= k
        self.keys[n : n + m] = new
        self.n = n + m
        add = np.sort(new)
        self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, add), add)

    def end(self) -> None:
        """The switch is over: forget every key."""
        self.ended = True
        self.n = 0
        self.sorted = self.sorted[:0]
