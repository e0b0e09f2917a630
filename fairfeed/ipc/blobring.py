"""Single-producer single-consumer ring of variable-length byte messages in shared memory.

Carries the rare, variable-sized things that do not fit a 64-byte record — today the malformed
frames an ingest worker forwards to the dead-letter topic. Same discipline as :mod:`.ring`:
monotonic byte counters on their own cache lines, one writer each. A message is an 8-byte header
(payload length) followed by the payload, padded to 8 bytes; a message never straddles the end
of the data area (a wrap marker sends the reader back to offset 0). A full ring refuses the
message and counts it: dead letters must never slow down the data path.
"""

from __future__ import annotations

import struct
from multiprocessing import shared_memory

from fairfeed.ipc.ring import HEADER_BYTES, RingError, new_ring_segment, ring_header
from fairfeed.ipc.shm import attach_segment

_HEAD, _TAIL, _DROPPED = 0, 8, 16  # the ring header's words (fairfeed.ipc.ring)
MAGIC = 0x66666565_64626C62  # "ffeedblb"
_LEN = struct.Struct("<Q")
_WRAP = 0xFFFF_FFFF_FFFF_FFFF


def _padded(n: int) -> int:
    return 8 + ((n + 7) & ~7)


class BlobRing:
    """An SPSC ring of byte messages; ``capacity`` bytes (a power of two)."""

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool) -> None:
        self._shm = shm
        self.name = shm.name
        self.owner = owner
        self._hdr, self.capacity = ring_header(shm, MAGIC, "blob ring")
        self._buf = shm.buf[HEADER_BYTES : HEADER_BYTES + self.capacity]

    @classmethod
    def create(cls, name: str, capacity: int) -> BlobRing:
        if capacity < 64 or capacity & (capacity - 1):
            raise RingError(f"blob ring capacity must be a power of two >= 64, got {capacity}")
        return cls(new_ring_segment(name, HEADER_BYTES + capacity, capacity, MAGIC), owner=True)

    @classmethod
    def attach(cls, name: str) -> BlobRing:
        return cls(attach_segment(name), owner=False)

    @property
    def dropped(self) -> int:
        return int(self._hdr[_DROPPED])

    def used(self) -> int:
        return int(self._hdr[_HEAD]) - int(self._hdr[_TAIL])

    def max_message(self) -> int:
        """Largest payload that can ever fit."""
        return self.capacity // 2 - 8

    def write(self, payload: bytes) -> bool:
        """Append one message; False (and counted as dropped) when it does not fit now."""
        n = len(payload)
        need = _padded(n)
        hdr = self._hdr
        head = int(hdr[_HEAD])
        free = self.capacity - (head - int(hdr[_TAIL]))
        pos = head % self.capacity
        to_end = self.capacity - pos
        wrap = need > to_end
        if n > self.max_message() or free < need + (to_end if wrap else 0):
            hdr[_DROPPED] = int(hdr[_DROPPED]) + 1
            return False
        buf = self._buf
        if wrap:
            if to_end >= 8:
                _LEN.pack_into(buf, pos, _WRAP)
            head += to_end
            pos = 0
        _LEN.pack_into(buf, pos, n)
        buf[pos + 8 : pos + 8 + n] = payload
        hdr[_HEAD] = head + need
        return True

    def read(self, max_messages: int = 1024) -> list[bytes]:
        """Consume up to ``max_messages`` messages."""
        hdr = self._hdr
        tail = int(hdr[_TAIL])
        head = int(hdr[_HEAD])
        out: list[bytes] = []
        buf = self._buf
        while tail < head and len(out) < max_messages:
            pos = tail % self.capacity
            to_end = self.capacity - pos
            if to_end < 8 or _LEN.unpack_from(buf, pos)[0] == _WRAP:
                tail += to_end
                continue
            (n,) = _LEN.unpack_from(buf, pos)
            out.append(bytes(buf[pos + 8 : pos + 8 + n]))
            tail += _padded(n)
        hdr[_TAIL] = tail
        return out

    def close(self) -> None:
        self._buf.release()
        self._hdr = None  # type: ignore[assignment]
        self._shm.close()

    def unlink(self) -> None:
        if not self.owner:
            raise RingError(f"blob ring {self.name!r} is not owned by this process")
        self._shm.unlink()
