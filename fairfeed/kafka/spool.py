"""The output spool: every Kafka message is written here before it is produced.

The spool is a write-ahead log on local disk. The sink appends each message (topic, key, value,
the records it carries) with a sequence number, writes the pass's messages with one ``write``
at the end of the pass, and only then hands them to the producer; a delivery report
acknowledges a sequence number. The *low watermark* is the first sequence number not yet
acknowledged; it is persisted (``acked``, 8 bytes) whenever it advances, and a segment file whose
messages are all below it is deleted. So:

- while the broker is down, slow or being reconnected, output waits here (bounded by
  ``max_bytes``) and is sent in order once the producer delivers again;
- a process that dies (even by SIGKILL: the data is in the kernel's page cache) leaves its
  unacknowledged messages behind, and the next one sends them first. Messages acknowledged in
  the moment before the death may be sent twice ("possibly duplicated"); nothing written is
  lost. A machine crash can lose what the kernel had not written to disk (no fsync per pass).

A *position marker* (the compute process's ring read positions, tied to the rings' name prefix)
can be written with a pass: a restarted compute process resumes after the last marker, so the
records whose output reached the spool are not processed twice.

On-disk entry: a 24-byte header ``crc32, body length, sequence, records, topic length, key
length`` then the topic, key and value. The crc covers the header after itself and the body; a
torn tail (a write cut by a crash) is truncated at the next open. Segment files are named by
their first sequence number (16 hex digits, ``.seg``). One process at a time: the directory is
locked with ``flock``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("fairfeed.spool")

_HEAD = struct.Struct("<IIQIHH")  # crc32, body length, sequence, records, topic len, key len
_CRC_FROM = 4  # the crc covers the header from this byte on, and the body
_CRC = struct.Struct("<I")
_MARKER = b""  # the topic of a position marker (no Kafka topic is empty)
_SUFFIX = ".seg"
_ACKED = "acked"
_LOCK = "lock"


class SpoolError(RuntimeError):
    """The spool directory cannot be used (not writable, locked by another process)."""


@dataclass(frozen=True)
class Entry:
    """One spooled message."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes
    records: int


@dataclass
class _Segment:
    path: Path
    first: int  # first sequence number written to it
    last: int  # last sequence number written to it (first - 1 while empty)
    size: int


class Spool:
    """A bounded write-ahead log of Kafka messages in ``directory``.

    ``max_bytes`` bounds the files on disk; :meth:`append` refuses a message that would pass it
    (``reserve=True`` may use ``reserve_bytes`` more, for the events announcing the overflow).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        segment_bytes: int = 16 << 20,
        reserve_bytes: int = 1 << 20,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1 << 12, min(segment_bytes, max_bytes // 4 or 1 << 12))
        self.reserve_bytes = reserve_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.dir}: {exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock)
            raise SpoolError(
                f"spool directory {self.dir} is in use by another process (kafka.spool_dir "
                "must differ between daemons)"
            ) from exc
        self._acked_fd = os.open(self.dir / _ACKED, os.O_RDWR | os.O_CREAT, 0o600)
        raw = os.pread(self._acked_fd, 8, 0)
        persisted = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        self.segments: list[_Segment] = []
        self.positions: tuple[bytes, np.ndarray] | None = None  # last marker: (prefix, tails)
        self.recovered = 0  # entries found on disk at open (unacknowledged ones)
        self.truncated = 0  # bytes of torn tail cut off at open
        sizes = self._recover(persisted)
        self._disk = sum(s.size for s in self.segments)  # bytes of the segment files
        self.low = max(persisted, self.segments[0].first if self.segments else persisted)
        self.low = min(self.low, self.next)
        self.recovered = self.next - self.low
        self._flags = bytearray(self.next - self.low)  # 1 = acknowledged, for [low, next)
        # entry sizes for [low, next), so the bytes still waiting are known without a scan
        self._sizes = array("I", (sizes.get(q, 0) for q in range(self.low, self.next)))
        self.waiting_bytes = sum(self._sizes)  # bytes of the messages not acknowledged yet
        self._buf = bytearray()
        self._buf_first = self.next  # sequence number of the first message in _buf
        self._fd = -1
        self._persisted = persisted
        self._cursor: tuple[int, Path, int] | None = None  # (next seq, segment, offset) of read()
        self._delete_acked()

    # -- opening -----------------------------------------------------------------------------
    def _recover(self, persisted: int) -> dict[int, int]:
        """Scan the segments (cutting a torn tail); the sizes of entries from ``persisted``."""
        sizes: dict[int, int] = {}
        paths = sorted(p for p in self.dir.iterdir() if p.name.endswith(_SUFFIX))
        nxt = persisted
        for i, path in enumerate(paths):
            try:
                first = int(path.name[: -len(_SUFFIX)], 16)
            except ValueError:
                log.warning("spool: ignoring %s (not a segment name)", path)
                continue
            seg = _Segment(path, first, first - 1, 0)
            good = 0
            data = path.read_bytes()
            for end, entry in _scan(data):
                size, good = end - good, end
                if entry.topic:
                    seg.last = entry.seq
                    if entry.seq >= persisted:
                        sizes[entry.seq] = size
                else:
                    self.positions = (entry.key or b"", np.frombuffer(entry.value, np.int64).copy())
            if good < len(data):
                self.truncated += len(data) - good
                if i == len(paths) - 1:
                    log.warning("spool: %s ends with %d bytes of a torn write: cut off",
                                path.name, len(data) - good)  # fmt: skip
                else:
                    log.error("spool: %s is corrupt after byte %d: %d bytes skipped",
                              path.name, good, len(data) - good)  # fmt: skip
                with open(path, "r+b") as f:
                    f.truncate(good)
            seg.size = good
            self.segments.append(seg)
            nxt = max(nxt, seg.last + 1, first)
        self.next = nxt  # the next sequence number to assign
        return sizes

    # -- writing -----------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes on disk and waiting to be written."""
        return self._disk + len(self._buf)

    @property
    def pending(self) -> int:
        """Messages not acknowledged yet."""
        return self.next - self.low

    def room(self, size: int, reserve: bool = False) -> bool:
        """Whether a message of ``size`` bytes (value + key + topic) fits."""
        limit = self.max_bytes + (self.reserve_bytes if reserve else 0)
        return self.bytes + _HEAD.size + size <= limit

    def append(
        self, topic: str, key: bytes | None, value: bytes, records: int = 1, reserve: bool = False
    ) -> int:
        """Queue one message for the next :meth:`write`; its sequence number, or -1 when the
        spool is full."""
        return self.append_many(topic, [(key, value)], (records,), reserve)

    def append_many(
        self,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes]],
        records: Sequence[int],
        reserve: bool = False,
    ) -> int:
        """Queue ``messages`` (key, value) of one topic, carrying ``records`` records each, for
        the next :meth:`write`: the first one's sequence number (the others follow), or -1 when
        they do not all fit (then none is queued)."""
        t = topic.encode()
        fixed = _HEAD.size + len(t)
        size = sum(fixed + len(k or b"") + len(v) for k, v in messages)
        limit = self.max_bytes + (self.reserve_bytes if reserve else 0)
        if self._disk + len(self._buf) + size > limit:
            return -1
        first = seq = self.next
        put, sizes = self._put, self._sizes
        for (k, v), n in zip(messages, records, strict=True):
            sizes.append(put(seq, t, k or b"", v, n))
            seq += 1
        self.next = seq
        self._flags.extend(bytes(seq - first))
        self.waiting_bytes += size
        return first

    def mark(self, prefix: bytes, tails: np.ndarray) -> None:
        """Queue a position marker (written with the next :meth:`write`)."""
        self._put(self.next, _MARKER, prefix, np.ascontiguousarray(tails, np.int64).tobytes(), 0)

    def _put(self, seq: int, topic: bytes, key: bytes, value: bytes, records: int) -> int:
        body_len = len(topic) + len(key) + len(value)
        covered = _HEAD.pack(0, body_len, seq, records, len(topic), len(key))[_CRC_FROM:]
        covered += topic + key
        buf = self._buf
        buf += _CRC.pack(zlib.crc32(value, zlib.crc32(covered)))
        buf += covered
        buf += value
        return _HEAD.size + body_len

    def write(self) -> None:
        """Write what :meth:`append` and :meth:`mark` queued (one ``write`` call, no fsync)."""
        buf = self._buf
        if not buf:
            return
        seg = self.segments[-1] if self.segments and self._fd >= 0 else None
        if seg is None or seg.size >= self.segment_bytes:
            seg = self._open_segment(self._buf_first)
        with memoryview(buf) as view:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        seg.size += len(buf)
        self._disk += len(buf)
        seg.last = max(seg.last, self.next - 1)
        buf.clear()
        self._buf_first = self.next

    def _open_segment(self, first: int) -> _Segment:
        if self._fd >= 0:
            os.close(self._fd)
        path = self.dir / f"{first:016x}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(self._fd).st_size
        if self.segments and self.segments[-1].path == path:
            return self.segments[-1]
        seg = _Segment(path, first, first - 1, size)
        self.segments.append(seg)
        self._disk += size
        return seg

    # -- acknowledging -----------------------------------------------------------------------
    def ack(self, seq: int) -> None:
        """Message ``seq`` is in Kafka (or given up for good)."""
        i = seq - self.low
        if 0 <= i < len(self._flags):
            self._flags[i] = 1

    def acked(self, seq: int) -> bool:
        i = seq - self.low
        return i < 0 or (i < len(self._flags) and self._flags[i] == 1)

    def advance(self) -> int:
        """Move the low watermark past the acknowledged prefix, persist it, delete segments
        left behind; returns the new low watermark."""
        flags = self._flags
        i = flags.find(0)
        if i < 0:
            i = len(flags)
        if i:
            del flags[:i]
            self.waiting_bytes -= sum(self._sizes[:i])
            del self._sizes[:i]
            self.low += i
        if self.low != self._persisted:
            os.pwrite(self._acked_fd, struct.pack("<Q", self.low), 0)
            self._persisted = self.low
            self._delete_acked()
        return self.low

    def _delete_acked(self) -> None:
        segs = self.segments
        while segs and segs[0].last < self.low:
            if self._fd >= 0 and len(segs) == 1:  # the segment being written
                if segs[0].size < self.segment_bytes:
                    break  # keep appending to it
                os.close(self._fd)
                self._fd = -1
            seg = segs.pop(0)
            self._disk -= seg.size
            seg.path.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def read(self, start: int, max_messages: int) -> list[Entry]:
        """Up to ``max_messages`` written messages with sequence numbers ≥ ``start``, in order
        (acknowledged ones skipped)."""
        out: list[Entry] = []
        cur = self._cursor
        for seg in self.segments:
            if seg.last < start:
                continue
            offset = cur[2] if cur is not None and cur[0] == start and cur[1] == seg.path else 0
            with open(seg.path, "rb") as f:
                f.seek(offset)
                data = f.read(seg.size - offset)
            for end, entry in _scan(data):
                if not entry.topic or entry.seq < start:
                    continue
                if not self.acked(entry.seq):
                    out.append(entry)
                if len(out) >= max_messages:
                    self._cursor = (entry.seq + 1, seg.path, offset + end)
                    return out
            start = max(start, seg.last + 1)
        self._cursor = None
        return out

    def close(self) -> None:
        """Write what is queued and release the directory."""
        if self._lock < 0:
            return
        self.write()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.advance()
        self._delete_acked()
        os.close(self._acked_fd)
        os.close(self._lock)
        self._lock = -1


def _scan(data: bytes) -> Iterator[tuple[int, Entry]]:
    """``(end offset, entry)`` for each whole, intact entry of ``data``; stops at the first
    torn or corrupt one (markers are entries with an empty topic)."""
    off, n, hs = 0, len(data), _HEAD.size
    mv = memoryview(data)
    while off + hs <= n:
        crc, body_len, seq, records, tlen, klen = _HEAD.unpack_from(data, off)
        end = off + hs + body_len
        if end > n or tlen + klen > body_len:
            return
        if zlib.crc32(mv[off + hs : end], zlib.crc32(mv[off + _CRC_FROM : off + hs])) != crc:
            return
        b = off + hs
        topic = bytes(mv[b : b + tlen]).decode()
        key = bytes(mv[b + tlen : b + tlen + klen])
        value = bytes(mv[b + tlen + klen : end])
        yield end, Entry(seq, topic, key or None, value, records)
        off = end
