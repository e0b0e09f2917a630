"""Single-producer single-consumer ring of records in POSIX shared memory.

Layout: a 256-byte header, then ``capacity`` records. The header holds monotonic 64-bit
counters, each on its own cache line so producer and consumer never write the same line:

====  ======================================================  ========
line  counter                                                 written by
====  ======================================================  ========
0     ``head``: records ever published (= records written)    producer
1     ``tail``: records ever consumed (= records read)        consumer
      ``waiting`` (word 1): the consumer sleeps, wake it      both (below)
2     ``dropped``: records refused for good (ring full)       producer
3     ``capacity`` and a magic number, set at creation        creator
====  ======================================================  ========

After the records comes a table of ``STAMPS`` *publish stamps* ``(head after the write, wall
time ns)``, one per :meth:`Ring.write`, indexed by a count kept next to ``head`` (line 0, word
1). The consumer uses them to time the receive → ring and ring → kernel hops per record without
touching the record (see :func:`fairfeed.hotpath.metrics.update_metrics_nb`); a stamp is
written before ``head``, so a consumer that sees the records sees their stamp. A consumer more
than ``STAMPS`` writes behind loses the oldest stamps (those records go untimed).

Indexes are ``counter & (capacity - 1)``. The producer copies records in, then stores ``head``;
the consumer reads ``head``, copies records out, then stores ``tail``. Each counter is an aligned
8-byte store by a single writer, and x86-64 keeps stores (and loads) in program order, so no
lock is needed. (On weakly ordered CPUs this needs release/acquire fences: not supported yet.)

**Waking the consumer.** A consumer with nothing to read sleeps on a doorbell (an eventfd,
:mod:`fairfeed.ipc.doorbell`) instead of polling: it sets ``waiting`` on each of its rings,
fences, looks at every ring once more (a write that came meanwhile cancels the sleep), then
waits. A producer calls :meth:`Ring.wake_wanted` after publishing (a fence, then it takes the
``waiting`` flag) and rings the bell when it took it: one system call per sleep of the
consumer, none while the consumer is busy. Each side stores, fences, then loads the other
side's word (Dekker), so at least one of them sees the other: no wake-up is lost.

:meth:`Ring.write` never waits: it publishes what fits and returns the count. What to do with
the rest is the producer's decision (:class:`OverflowPolicy`; the ingest worker holds it back,
pauses its sockets and retries, ``fairfeed.daemon.backpressure``); records it gives up on are
counted with :meth:`Ring.count_dropped`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from fairfeed.core.records import RECORD_DTYPE, RECORD_SIZE
from fairfeed.ipc.doorbell import fence
from fairfeed.ipc.shm import attach_segment, create_segment

HEADER_BYTES = 256
_U64_PER_LINE = 8  # 64-byte cache line / 8-byte counters
_HEAD = 0
_STAMP_COUNT = 1  # publish stamps ever written (producer's line)
_TAIL = 1 * _U64_PER_LINE
_WAITING = _TAIL + 1  # the consumer sleeps until a producer rings its doorbell
_DROPPED = 2 * _U64_PER_LINE
_CAPACITY = 3 * _U64_PER_LINE
_MAGIC = _CAPACITY + 1
MAGIC = 0x66666565_64726E67  # "ffeedrng"
# Records are copied as opaque 64-byte items: numpy copies a structured dtype field by field,
# about 20x slower than this plain memcpy (measured: 12 µs vs 0.6 µs per 256 records).
_RAW = np.dtype((np.void, RECORD_SIZE))
STAMPS = 1024  # publish stamps kept (power of two)


class RingError(RuntimeError):
    """A ring could not be created or attached (bad capacity, wrong segment)."""


@dataclass(frozen=True)
class OverflowPolicy:
    """What a producer does with records that do not fit a full ring.

    It holds up to ``pending_records`` of them back (in order, ahead of newer ones), stops
    reading its input and retries every ``retry_interval`` seconds without blocking; once the
    ring has taken nothing for ``block_timeout`` seconds (the consumer is stuck), or the input
    has been paused ``max_pause`` seconds in all (its pings wait too), the held records are
    dropped and counted. ``block_timeout=0`` drops at once. Applied by
    ``fairfeed.daemon.backpressure.RingWriter``.
    """

    block_timeout: float = 0.05
    retry_interval: float = 0.0005
    pending_records: int = 1 << 17
    max_pause: float = 0.5


def segment_size(capacity: int) -> int:
    """Bytes needed for a ring of ``capacity`` records."""
    return HEADER_BYTES + capacity * RECORD_SIZE + STAMPS * 16


def new_ring_segment(name: str, size: int, capacity: int, magic: int) -> shared_memory.SharedMemory:
    """A new segment whose header (the layout above) is zeroed but for capacity and magic."""
    shm = create_segment(name, size)
    hdr = np.ndarray((HEADER_BYTES // 8,), np.uint64, shm.buf)
    hdr[:] = 0
    hdr[_CAPACITY] = capacity
    hdr[_MAGIC] = magic
    del hdr  # no view may outlive the segment's close
    return shm


def ring_header(shm: shared_memory.SharedMemory, magic: int, what: str) -> tuple[np.ndarray, int]:
    """The header words of a ring segment and its capacity; RingError if it is not a ``what``."""
    hdr = np.ndarray((HEADER_BYTES // 8,), np.uint64, shm.buf)
    if int(hdr[_MAGIC]) != magic:
        raise RingError(f"shared-memory segment {shm.name!r} is not a fairfeed {what}")
    return hdr, int(hdr[_CAPACITY])


class Ring:
    """One SPSC ring. Use :meth:`create` in the supervisor and :meth:`attach` elsewhere.

    A forked child may keep using the parent's ``Ring`` object: the mapping is inherited.
    """

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name
        self._hdr, self.capacity = ring_header(shm, MAGIC, "ring")
        self._mask = self.capacity - 1
        self._data = np.ndarray((self.capacity,), dtype=_RAW, buffer=shm.buf, offset=HEADER_BYTES)
        off = HEADER_BYTES + self.capacity * RECORD_SIZE
        #: publish stamps: ``stamp_end[i % STAMPS]`` = head after write i, ``stamp_ns`` its time
        self.stamp_end = np.ndarray((STAMPS,), np.int64, shm.buf, off)
        self.stamp_ns = np.ndarray((STAMPS,), np.int64, shm.buf, off + STAMPS * 8)
        # The consumer's read position when it reads ahead of its commits (None: the tail).
        # Per process: a forked consumer starts from the committed tail.
        self._cursor: int | None = None

    @classmethod
    def create(cls, name: str, capacity: int) -> Ring:
        """Create and own a new ring; ``capacity`` must be a power of two ≥ 2."""
        if capacity < 2 or capacity & (capacity - 1):
            raise RingError(f"ring capacity must be a power of two >= 2, got {capacity}")
        return cls(new_ring_segment(name, segment_size(capacity), capacity, MAGIC), owner=True)

    @classmethod
    def attach(cls, name: str) -> Ring:
        """Attach to a ring created by another process, without taking ownership."""
        return cls(attach_segment(name), owner=False)

    # -- counters -------------------------------------------------------------------------
    @property
    def written(self) -> int:
        """Records ever published."""
        return int(self._hdr[_HEAD])

    @property
    def read_count(self) -> int:
        """Records ever consumed."""
        return int(self._hdr[_TAIL])

    @property
    def dropped(self) -> int:
        """Records the producer gave up on because the ring stayed full (its overflow policy)."""
        return int(self._hdr[_DROPPED])

    @property
    def stamp_count(self) -> int:
        """Publish stamps ever written (the newest is ``(stamp_count - 1) % STAMPS``)."""
        return int(self._hdr[_STAMP_COUNT])

    def fill(self) -> int:
        """Records published and not yet consumed."""
        return int(self._hdr[_HEAD]) - int(self._hdr[_TAIL])

    def free(self) -> int:
        """Records that fit now."""
        return self.capacity - self.fill()

    # -- producer -------------------------------------------------------------------------
    def write(self, records: np.ndarray) -> int:
        """Publish what fits of ``records`` (a RECORD_DTYPE array) now; returns how many.

        Never waits and counts nothing as dropped: the caller keeps or drops the rest
        (:meth:`count_dropped`). Writes in as few copies as the wraparound allows.
        """
        n = len(records)
        if n == 0:
            return 0
        hdr = self._hdr
        head = int(hdr[_HEAD])
        k = min(n, self.capacity - (head - int(hdr[_TAIL])))
        if k:
            self._copy_in(head, records[:k] if k < n else records)
            w = int(hdr[_STAMP_COUNT])
            self.stamp_end[w & (STAMPS - 1)] = head + k
            self.stamp_ns[w & (STAMPS - 1)] = time.time_ns()
            hdr[_STAMP_COUNT] = w + 1
            hdr[_HEAD] = head + k
        return k

    def wake_wanted(self) -> bool:
        """Producer, after a write: whether the consumer sleeps waiting for records (it then
        needs its doorbell rung). Takes the request: one wake-up per sleep."""
        fence()
        hdr = self._hdr
        if hdr[_WAITING]:
            hdr[_WAITING] = 0
            return True
        return False

    def count_dropped(self, n: int) -> None:
        """Count ``n`` records the producer gave up on (the ``dropped`` counter)."""
        if n > 0:
            self._hdr[_DROPPED] = int(self._hdr[_DROPPED]) + n

    def _copy_in(self, head: int, records: np.ndarray) -> None:
        if records.dtype != RECORD_DTYPE:
            raise TypeError(f"ring records must have RECORD_DTYPE, got {records.dtype}")
        records = records.view(_RAW)
        start = head & self._mask
        first = min(len(records), self.capacity - start)
        self._data[start : start + first] = records[:first]
        if first < len(records):
            self._data[: len(records) - first] = records[first:]

    # -- consumer -------------------------------------------------------------------------
    @property
    def cursor(self) -> int:
        """Records this consumer has read (ahead of ``read_count`` until :meth:`commit`)."""
        return self._cursor if self._cursor is not None else int(self._hdr[_TAIL])

    def read_into(self, out: np.ndarray, commit: bool = True) -> int:
        """Consume up to ``len(out)`` records into ``out``; returns how many.

        With ``commit=False`` the records are read but the ring keeps them (the producer
        cannot overwrite them) until :meth:`commit`: a consumer that dies before committing
        leaves them for its successor."""
        hdr = self._hdr
        tail = self.cursor
        k = min(len(out), int(hdr[_HEAD]) - tail)
        if k <= 0:
            return 0
        if out.dtype != RECORD_DTYPE:
            raise TypeError(f"ring records must have RECORD_DTYPE, got {out.dtype}")
        raw = out.view(_RAW)
        start = tail & self._mask
        first = min(k, self.capacity - start)
        raw[:first] = self._data[start : start + first]
        if first < k:
            raw[first:k] = self._data[: k - first]
        self._cursor = tail + k
        if commit:
            hdr[_TAIL] = tail + k
        return k

    def unread(self) -> int:
        """Records published that this consumer has not read yet."""
        return int(self._hdr[_HEAD]) - self.cursor

    def set_waiting(self, on: bool) -> None:
        """Consumer: ask the producer for a wake-up at its next write (``on``), or stop asking.
        Call :func:`fence` after asking and before the last look at :meth:`unread`."""
        self._hdr[_WAITING] = 1 if on else 0

    def commit(self, position: int | None = None) -> None:
        """Release what was read up to ``position`` (default: everything read) to the
        producer."""
        pos = self.cursor if position is None else position
        if pos > int(self._hdr[_TAIL]):
            self._hdr[_TAIL] = pos
            if pos > self.cursor:
                self._cursor = pos

    def read(self, max_records: int) -> np.ndarray:
        """Consume up to ``max_records`` records and return them as a new array."""
        out = np.empty(min(max_records, self.capacity), dtype=RECORD_DTYPE)
        return out[: self.read_into(out)]

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop this process's mapping (views first, or the buffer cannot be released)."""
        self._data = self.stamp_end = self.stamp_ns = None  # type: ignore[assignment]
        self._hdr = None  # type: ignore[assignment]
        self._shm.close()

    def unlink(self) -> None:
        """Remove the segment; only the owner may do this."""
        if not self.owner:
            raise RingError(f"ring {self.name!r} is not owned by this process")
        self._shm.unlink()
