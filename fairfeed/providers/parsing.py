"""What every provider parser shares: the protocol, result codes, the record layout, bounded logs.

A parser turns one wire message into records written straight into a caller-owned
RECORD_DTYPE buffer: ``parse(data, out, start, ts_receive) -> int``. A result >= 0 is the
number of records written at ``out[start:]``; a negative result is one of the codes below. A
parser never raises for bad input: a malformed message returns :data:`PARSE_ERROR` with the
reason in ``parser.error`` (anything it wrote before failing is ignored by the caller).

A parser may also take the messages of one socket read at once (``batch_records`` > 0, the most
records one message gives): ``parse_batch(messages, out, start, ts_receive)`` writes the records
of all of them and returns how many, or :data:`PER_MESSAGE` when the batch is not plain data
throughout (a control message, a malformed one...): the caller then parses the same messages one
by one with ``parse``, which says what each is. One decode per read instead of one per message.

Every venue parser is a :class:`RecordParser` and is built the same way by its adapter:
``XParser.for_subscriptions(subs, **variant)`` (one connection's subscriptions; ``variant`` the
protocol's switches, e.g. Binance ``agg``). Its plain constructor takes the wire-symbol table
and the ids, for tests and benchmarks.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

import numpy as np

from fairfeed.core.records import RECORD_DTYPE
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.redact import Redactor

HEARTBEAT = -1  # a heartbeat: the connection is alive, no records
CONTROL = -2  # a protocol answer (subscribed, error, reconnect notice...), in parser.control
PARSE_ERROR = -3  # malformed message; the reason is in parser.error
NEED_SPACE = -4  # the message needs parser.needed free records from `start`
PER_MESSAGE = -5  # parse_batch: not plain data throughout, parse these messages one by one

# The record as a little-endian struct, field for field (the dtype has no padding), so a parser
# can write a whole record with one ``RECORD_STRUCT.pack_into(buf_u8, start * 64, ...)``:
# ts_exchange, ts_provider, ts_receive, price, size, sequence, instrument, provider, venue,
# kind, data_class, side, flags, reserved.
RECORD_STRUCT = struct.Struct("<qqqddqIHHBBBBI")
assert RECORD_STRUCT.size == RECORD_DTYPE.itemsize


class Parser(Protocol):
    """The interface adapters rely on (one parser per connection)."""

    error: str  # reason of the last PARSE_ERROR
    control: object  # the last CONTROL message (a wire Struct of the venue's wire module)
    needed: int  # records the last NEED_SPACE message needs
    # Running totals of health records the parser wrote itself, which the WebSocket base adds
    # to the worker's counters: gaps it found (numbering per connection or per venue symbol;
    # KIND_GAP records, ``missed`` messages in all) and heartbeat records (a venue whose
    # heartbeats name a product). 0 for a parser that leaves gaps to the base's tracker.
    gaps: int
    missed: int
    heartbeats: int

    def parse(self, data: bytes | memoryview, out: np.ndarray, start: int, ts_receive: int) -> int:
        """Parse one message into ``out[start:]``; records written, or a negative code."""
        ...

    def reset(self) -> None:
        """Forget per-connection state; the base calls it on every (re)connect."""
        ...


class RecordParser:
    """Base of every venue parser: the :class:`Parser` state and the shared construction."""

    __slots__ = ("_out", "_u8", "control", "data_class", "error", "gaps", "heartbeats",
                 "missed", "needed", "provider", "venue")  # fmt: skip

    def __init__(self, provider: int, venue: int = 0, data_class: int = 0) -> None:
        self.provider = provider
        self.venue = venue  # ids of a single-venue connection's records (0: the table has them)
        self.data_class = data_class
        self.error = ""
        self.control: object = None
        self.needed = 0
        self.gaps = self.missed = self.heartbeats = 0
        self._out: np.ndarray | None = None
        self._u8: np.ndarray | None = None

    @staticmethod
    def wire_symbol(sub: Subscription) -> str:
        """The venue's name for ``sub`` (the key of the symbol table)."""
        raise NotImplementedError

    @classmethod
    def for_subscriptions(cls, subs: Sequence[Subscription], **variant: Any) -> Self:
        """A parser for one connection carrying ``subs`` (one venue and class: their ids)."""
        first = subs[0] if subs else None
        return cls(
            {cls.wire_symbol(s): s.instrument_id for s in subs},
            first.provider_id if first else 0,
            first.venue_id if first else 0,
            first.class_code if first else 0,
            **variant,
        )

    # The most records one message gives, for parse_batch (0: the parser has none).
    batch_records = 0

    def reset(self) -> None:
        """Nothing is kept across messages unless a venue says so."""

    def parse(self, data: bytes | memoryview, out: np.ndarray, start: int, ts_receive: int) -> int:
        raise NotImplementedError

    def parse_batch(
        self, messages: Sequence[bytes], out: np.ndarray, start: int, ts_receive: int
    ) -> int:
        """Parse every message of ``messages`` into ``out[start:]`` (room for
        ``batch_records`` per message is the caller's); records written, or PER_MESSAGE."""
        return PER_MESSAGE

    def _buffer(self, out: np.ndarray) -> np.ndarray:
        """``out`` as bytes (the view is cached while the caller keeps the same buffer)."""
        if out is not self._out:
            self._out = out
            self._u8 = out.view(np.uint8)
        return self._u8  # type: ignore[return-value]


class ErrorLog:
    """Logs at most one line per ``interval`` seconds, with how many were suppressed.

    Every provider error and malformed frame is logged here, so this is where provider text is
    redacted (``redact``: configured API keys, credential-looking values), once per line logged.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 1.0,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.redact = redact or Redactor()
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
        line = f"{self.what}: {reason}{extra}"
        if shown:
            line += f"; frame {shown!r}{more}"
        self.logger.warning("%s", self.redact(line))
        return True
