"""What every provider parser shares: result codes, the packed record layout, bounded logs.

A parser turns one wire message into records written straight into a caller-owned
RECORD_DTYPE buffer: ``parse(data, out, start, ts_receive) -> int``. A result >= 0 is the
number of records written at ``out[start:]``; a negative result is one of the codes below. A
parser never raises for bad input: a malformed message returns :data:`PARSE_ERROR` with the
reason in ``parser.error`` (anything it wrote before failing is ignored by the caller).
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Protocol

import numpy as np

from fairfeed.core.records import RECORD_DTYPE

HEARTBEAT = -1  # a heartbeat: the connection is alive, no records
CONTROL = -2  # a protocol answer (subscribed, error, reconnect notice...), in parser.control
PARSE_ERROR = -3  # malformed message; the reason is in parser.error
NEED_SPACE = -4  # the message needs parser.needed free records from `start`

# The record as a little-endian struct, field for field (the dtype has no padding), so a parser
# can write a whole record with one ``RECORD_STRUCT.pack_into(buf_u8, start * 64, ...)``:
# ts_exchange, ts_provider, ts_receive, price, size, sequence, instrument, provider, venue,
# kind, data_class, side, flags, reserved.
RECORD_STRUCT = struct.Struct("<qqqddqIHHBBBBI")
assert RECORD_STRUCT.size == RECORD_DTYPE.itemsize


class Parser(Protocol):
    """The interface adapters rely on."""

    error: str
    control: object
    needed: int

    def parse(self, data: bytes | memoryview, out: np.ndarray, start: int, ts_receive: int) -> int:
        """Parse one message into ``out[start:]``; records written, or a negative code."""
        ...


class ErrorLog:
    """Logs at most one line per ``interval`` seconds, with how many were suppressed."""

    def __init__(self, logger: logging.Logger, what: str, interval: float = 1.0) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.suppressed = 0
        self._next = 0.0

    def __call__(self, reason: str, frame: bytes | str = b"", limit: int = 200) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        extra = f" (+{self.suppressed} suppressed)" if self.suppressed else ""
        self.suppressed = 0
        shown = bytes(frame[:limit]) if not isinstance(frame, str) else frame[:limit]
        more = "…" if len(frame) > limit else ""
        if shown:
            self.logger.warning("%s: %s%s; frame %r%s", self.what, reason, extra, shown, more)
        else:
            self.logger.warning("%s: %s%s", self.what, reason, extra)
        return True
