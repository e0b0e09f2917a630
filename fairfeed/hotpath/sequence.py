"""Per-stream sequence tracking over record batches: gaps, and records already published.

A venue that numbers its messages per instrument lets us see what we missed: after sequence
``s``, the next tracked record of the stream must carry ``s`` (a repeat, e.g. the bid and ask of
one quote) or ``s + 1``; ``s + k`` with k > 1 means k - 1 messages were lost and yields one
KIND_GAP record. A stream is (instrument, source), a source being a provider × venue pair.

The last number per stream lives in a table the caller owns (``last_ids[instrument, source]``,
-1 = none yet), not in the connection: it outlives reconnects and, in shared memory, the ingest
worker, so the first number after a reconnect or a worker restart reports what was missed
meanwhile. A record numbered below the stream's last one, or a trade numbered equal to it, was
published already (a planned reconnect's two sessions overlap): it is dropped. Quotes may share
their number (bid and ask), so only a lower one drops them.

A jump by more than ``max_jump`` either way is not believed: one absurd number (a trade id of
9e18) would otherwise count 9e18 messages missed and, becoming the stream's last number, make
every later record look published already, blind to the gaps after it. Such a jump gives one
gap record of unknown size (``size`` = -1, counted as a gap with nothing missed: see
:func:`missed`) and restarts the stream: the next record sets its number afresh.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import KIND_GAP, KIND_TRADE, RECORD_DTYPE

# More than this many numbers between two records of one stream, either way, is not a gap but a
# broken (or restarted) numbering. Ten million trades of one instrument is days of the busiest
# pair on any venue we read.
MAX_JUMP = 10_000_000
UNKNOWN_MISSED = -1.0  # ``size`` of the gap record of an implausible jump


@njit(cache=True)
def track_sequences_nb(records, n, last_ids, source_of_venue, tracked, gaps,
                       max_jump):  # fmt: skip  # pragma: no cover
    """Check ``records[:n]``, compacting the records kept to the front; write gap records.

    ``last_ids[instrument, source]`` is the last number published per stream (-1 = none),
    updated in place; ``source_of_venue[venue]`` is the source id of the caller's provider at
    that venue (-1 = not tracked); ``tracked[kind]`` is 1 for kinds whose ``sequence`` is
    contiguous per stream. A gap record copies the record after the gap with kind KIND_GAP,
    price 0 and ``size`` = the number of messages missed (UNKNOWN_MISSED after a jump by more
    than ``max_jump``, which restarts the stream). Returns (records kept, gap records written);
    gaps beyond ``len(gaps)`` update the state but are not written.
    Reference: :func:`track_sequences_reference`.
    """
    m = 0
    k = 0
    n_inst = last_ids.shape[0]
    n_src = last_ids.shape[1]
    n_venue = source_of_venue.shape[0]
    for i in range(n):
        r = records[i]
        seq = r.sequence
        keep = True
        if seq >= 0 and tracked[r.kind] != 0 and r.venue < n_venue:
            src = source_of_venue[r.venue]
            inst = r.instrument
            if src >= 0 and src < n_src and inst < n_inst:
                last = last_ids[inst, src]
                if last >= 0 and (seq - last > max_jump or last - seq > max_jump):
                    if m < gaps.shape[0]:
                        gaps[m] = r
                        gaps[m].kind = KIND_GAP
                        gaps[m].price = 0.0
                        gaps[m].size = UNKNOWN_MISSED
                        m += 1
                    last_ids[inst, src] = -1
                elif last >= 0 and (seq < last or (seq == last and r.kind == KIND_TRADE)):
                    keep = False
                else:
                    if last >= 0 and seq > last + 1 and m < gaps.shape[0]:
                        gaps[m] = r
                        gaps[m].kind = KIND_GAP
                        gaps[m].price = 0.0
                        gaps[m].size = float(seq - last - 1)
                        m += 1
                    if seq > last:
                        last_ids[inst, src] = seq
        if keep:
            if k != i:
                records[k] = records[i]
            k += 1
    return k, m


def missed(gaps: np.ndarray) -> int:
    """Messages missed in gap records (a gap of unknown size counts none)."""
    return int(np.maximum(gaps["size"], 0.0).sum())


def track_sequences_reference(
    records: np.ndarray,
    last_ids: np.ndarray,
    source_of_venue: np.ndarray,
    tracked: np.ndarray,
    max_jump: int = MAX_JUMP,
) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Plain-Python oracle: indexes of the records kept, and ``(instrument, source, sequence
    after the gap, missed)`` per gap (-1 = unknown); ``last_ids`` is updated in place."""
    kept, gaps = [], []
    for i, r in enumerate(records):
        seq, inst, venue, kind = (int(r[f]) for f in ("sequence", "instrument", "venue", "kind"))
        src = int(source_of_venue[venue]) if venue < len(source_of_venue) else -1
        numbered = seq >= 0 and tracked[kind] and 0 <= src < last_ids.shape[1]
        if not numbered or inst >= last_ids.shape[0]:
            kept.append(i)
            continue
        last = int(last_ids[inst, src])
        if last >= 0 and abs(seq - last) > max_jump:
            kept.append(i)
            gaps.append((inst, src, seq, -1))
            last_ids[inst, src] = -1
            continue
        if last >= 0 and (seq < last or (seq == last and kind == KIND_TRADE)):
            continue  # published already
        kept.append(i)
        if last >= 0 and seq > last + 1:
            gaps.append((inst, src, seq, seq - last - 1))
        if seq > last:
            last_ids[inst, src] = seq
    return kept, gaps


class SequenceTracker:
    """Gap and repeat checks of one connection against a last-id table shared by connections.

    ``source_of_venue[venue]`` names the connection's source id per venue (-1 = none).
    """

    def __init__(
        self,
        source_of_venue: np.ndarray,
        kinds: tuple[int, ...],
        max_gaps: int = 1024,
        max_jump: int = MAX_JUMP,
    ) -> None:
        self.max_jump = np.int64(max_jump)
        self.source_of_venue = np.asarray(source_of_venue, np.int32)
        self.tracked = np.zeros(256, np.uint8)
        self.tracked[list(kinds)] = 1
        self.gaps = np.zeros(max_gaps, RECORD_DTYPE)
        self.enabled = bool(kinds)

    def check(self, records: np.ndarray, last_ids: np.ndarray) -> tuple[int, np.ndarray]:
        """Compact ``records`` in place to the records not published yet; returns how many and
        the gap records (a view valid until the next call)."""
        n = len(records)
        if not self.enabled or n == 0:
            return n, self.gaps[:0]
        kept, m = track_sequences_nb(
            records, n, last_ids, self.source_of_venue, self.tracked, self.gaps, self.max_jump
        )
        return kept, self.gaps[:m]
