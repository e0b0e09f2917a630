"""What the Numba JSON scanners share: a hashed name table and exact token readers.

The venue scanners (:mod:`.binancescan`, :mod:`.coinbasescan`) read one venue's exact message
shape straight into records and decline whatever else. Their pieces that are not about a venue
live here: the table of the names they look up (streams, products), and readers of JSON strings,
integers and decimal texts that accept only what they can read exactly as the msgspec reference
parsers would (no escapes, no exponents, no number too long to convert exactly).

Decimal strings convert exactly (correctly rounded, as ``float(str)``) because only the fast case
is taken: an integer mantissa below 2**53 divided by a power of ten up to 1e22, both exact
doubles, in one correctly rounded division.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_POW10 = np.array([10.0**k for k in range(23)])  # exact doubles
_MANTISSA_LIMIT = 1 << 53
_INT_DIGITS = 18  # more digits may not fit int64


class StreamTable:
    """The names one parser looks up (stream names, product ids), hashed for :func:`lookup`."""

    def __init__(self, book: dict[str, tuple[int, bool]]) -> None:
        names = [s.encode() for s in book]
        width = max((len(n) for n in names), default=1)
        self.names = np.zeros((max(1, len(names)), width), np.uint8)
        self.lengths = np.zeros(max(1, len(names)), np.int32)
        self.instrument = np.zeros(max(1, len(names)), np.uint32)
        self.is_book = np.zeros(max(1, len(names)), np.uint8)
        size = 8
        while size < 4 * len(names):
            size *= 2
        self.slots = np.full(size, -1, np.int32)
        for i, (name, (inst, is_book)) in enumerate(zip(names, book.values(), strict=True)):
            self.names[i, : len(name)] = np.frombuffer(name, np.uint8)
            self.lengths[i] = len(name)
            self.instrument[i] = inst
            self.is_book[i] = is_book
            h = _hash_py(name) & (size - 1)
            while self.slots[h] >= 0:
                h = (h + 1) & (size - 1)
            self.slots[h] = i


def _hash_py(name: bytes) -> int:
    h = 2166136261
    for c in name:
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


@njit(cache=True)
def lookup(data, i, j, names, lengths, slots):  # pragma: no cover
    """The table row of the name ``data[i:j]``, or -1."""
    h = np.uint32(2166136261)
    for k in range(i, j):
        h = (h ^ np.uint32(data[k])) * np.uint32(16777619)
    mask = slots.shape[0] - 1
    s = np.int64(h) & mask
    n = j - i
    while slots[s] >= 0:
        row = slots[s]
        if lengths[row] == n:
            same = True
            for k in range(n):
                if names[row, k] != data[i + k]:
                    same = False
                    break
            if same:
                return row
        s = (s + 1) & mask
    return -1


@njit(cache=True)
def string_end(data, i, e):  # pragma: no cover
    """Index of the quote closing the string whose content starts at ``i``; -1 if it has an
    escape, a control or non-ASCII byte, or does not close before ``e``."""
    while i < e:
        c = data[i]
        if c == 34:  # "
            return i
        if c == 92 or c < 32 or c > 126:
            return -1
        i += 1
    return -1


@njit(cache=True)
def int_end(data, i, e):  # pragma: no cover
    """End of the plain JSON integer (digits, no sign, no leading zero) at ``i``; -1 if none."""
    j = i
    while j < e and 48 <= data[j] <= 57:
        j += 1
    n = j - i
    if n == 0 or n > _INT_DIGITS or (n > 1 and data[i] == 48):
        return -1
    return j


@njit(cache=True)
def int_value(data, i, j):  # pragma: no cover
    """The value of the digits ``data[i:j]`` (checked by :func:`int_end`)."""
    v = np.int64(0)
    for k in range(i, j):
        v = v * 10 + (data[k] - 48)
    return v


@njit(cache=True)
def decimal(data, i, j):  # pragma: no cover
    """The value of the decimal text ``data[i:j]`` (digits, optionally ``.`` and digits), or -1.0
    when it is not one or not exactly convertible by the fast path."""
    if i >= j:
        return -1.0
    if data[i] == 48 and i + 1 < j and data[i + 1] != 46:  # a leading zero
        return -1.0
    m = np.int64(0)
    frac = -1  # digits after the point (-1: no point yet)
    for k in range(i, j):
        c = data[k]
        if 48 <= c <= 57:
            m = m * 10 + (c - 48)
            if m >= _MANTISSA_LIMIT:
                return -1.0
            if frac >= 0:
                frac += 1
        elif c == 46 and frac < 0 and k > i:
            frac = 0
        else:
            return -1.0
    if frac == 0 or frac > 22:  # "1." or too many decimals for the exact path
        return -1.0
    if frac > 0:
        return m / _POW10[frac]
    return float(m)
