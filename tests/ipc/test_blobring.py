"""Blob ring: variable-length messages, wraparound against a FIFO model, drops counted."""

from __future__ import annotations

import os
import uuid
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.ipc.blobring import BlobRing


def _ring(capacity: int = 256) -> BlobRing:
    return BlobRing.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}", capacity)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(st.binary(max_size=140), st.integers(min_value=0, max_value=5)), max_size=80
    )
)
def test_matches_fifo_model(ops: list) -> None:
    ring = _ring(256)
    try:
        model: deque[bytes] = deque()
        dropped = 0
        for op in ops:
            if isinstance(op, bytes):
                if ring.write(op):
                    model.append(op)
                else:
                    dropped += 1
            else:
                expected = [model.popleft() for _ in range(min(op, len(model)))]
                assert ring.read(op) == expected
        assert ring.read(10_000) == list(model)
        assert ring.dropped == dropped and ring.used() == 0
    finally:
        ring.close()
        ring.unlink()


def test_too_big_or_full_is_refused_and_counted() -> None:
    ring = _ring(256)
    try:
        assert not ring.write(b"x" * 200)  # larger than half the ring
        assert ring.write(b"a" * 100) and ring.write(b"b" * 100)
        assert not ring.write(b"c" * 100)  # full
        assert ring.dropped == 2
        assert ring.read() == [b"a" * 100, b"b" * 100]
        assert ring.write(b"c" * 100)  # room again, wrapping around
        assert ring.read() == [b"c" * 100]
    finally:
        ring.close()
        ring.unlink()
