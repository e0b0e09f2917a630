"""Per-instrument sequence-gap detection over record batches (one tracker per connection).

A venue that numbers its messages per instrument lets us see what we missed: after sequence
``s``, the next tracked record must carry ``s`` (a repeat, e.g. the bid and ask of one quote) or
``s + 1``; ``s + k`` with k > 1 means k - 1 messages were lost and yields one KIND_GAP record.
Older numbers (a replay or a duplicate) change nothing. The first number seen after a (re)connect
sets the expectation: a reconnect is reported as a reconnect, never as a gap.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import KIND_GAP, RECORD_DTYPE


@njit(cache=True)
def detect_gaps_nb(records, start, end, last_seq, tracked, gaps):  # pragma: no cover - jitted
    """Check ``records[start:end]``; write one KIND_GAP record per gap into ``gaps``.

    ``last_seq[instrument]`` is the last number seen (-1 = none yet), updated in place;
    ``tracked[kind]`` is 1 for kinds whose ``sequence`` is contiguous per instrument. A gap
    record copies the record after the gap with kind KIND_GAP, price 0 and ``size`` = the number
    of messages missed. Returns the gap records written (at most ``len(gaps)``; further gaps
    update the state but are not written). Reference: :func:`detect_gaps_reference`.
    """
    m = 0
    n_inst = last_seq.shape[0]
    for i in range(start, end):
        r = records[i]
        seq = r.sequence
        if seq < 0 or tracked[r.kind] == 0:
            continue
        inst = r.instrument
        if inst >= n_inst:
            continue
        last = last_seq[inst]
        if last >= 0 and seq > last + 1 and m < gaps.shape[0]:
            gaps[m] = r
            gaps[m].kind = KIND_GAP
            gaps[m].price = 0.0
            gaps[m].size = float(seq - last - 1)
            m += 1
        if seq > last:
            last_seq[inst] = seq
    return m


def detect_gaps_reference(
    records: np.ndarray, start: int, end: int, last_seq: np.ndarray, tracked: np.ndarray
) -> list[tuple[int, int, int]]:
    """Plain-Python oracle: ``(instrument, sequence after the gap, missed)`` per gap."""
    out = []
    for r in records[start:end]:
        seq, inst = int(r["sequence"]), int(r["instrument"])
        if seq < 0 or not tracked[r["kind"]] or inst >= len(last_seq):
            continue
        last = int(last_seq[inst])
        if last >= 0 and seq > last + 1:
            out.append((inst, seq, seq - last - 1))
        if seq > last:
            last_seq[inst] = seq
    return out


class SequenceTracker:
    """Gap detection state of one connection; :meth:`reset` it on every (re)connect."""

    def __init__(self, n_instruments: int, kinds: tuple[int, ...], max_gaps: int = 1024) -> None:
        self.last_seq = np.full(max(n_instruments, 1), -1, np.int64)
        self.tracked = np.zeros(256, np.uint8)
        self.tracked[list(kinds)] = 1
        self.gaps = np.zeros(max_gaps, RECORD_DTYPE)
        self.enabled = bool(kinds)

    def reset(self) -> None:
        self.last_seq[:] = -1

    def check(self, records: np.ndarray, start: int, end: int) -> np.ndarray:
        """Gap records for ``records[start:end]`` (a view valid until the next call)."""
        if not self.enabled or end <= start:
            return self.gaps[:0]
        m = detect_gaps_nb(records, start, end, self.last_seq, self.tracked, self.gaps)
        return self.gaps[:m]
