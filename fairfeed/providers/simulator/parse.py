"""Simulator frame → RECORD_DTYPE records.

Measured choice (bench/test_bench_parse.py): msgspec typed decode (tagged unions, so type
checking happens in C while decoding) and one ``struct.pack_into`` per record into a byte view
of the preallocated record buffer. That beat orjson → dicts, structured-array item assignment,
per-column lists and ``np.array(list_of_tuples)`` at every batch size we tried.

A frame is the unit of success or failure: a malformed frame writes no records (anything written
at ``out[start:]`` before the error is garbage the caller ignores) and returns
:data:`PARSE_ERROR`; :meth:`FrameParser.parse` never raises for bad input.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import msgspec
import numpy as np

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    RECORD_STRUCT,
    RecordParser,
)
from fairfeed.providers.simulator.wire import (
    SERVER_FRAME_DECODER,
    Batch,
    Heartbeat,
    Trade,
)

# The codes and the record layout are shared by every provider parser.
_RECORD = RECORD_STRUCT
_SIDES = {"buy": SIDE_BUY, "sell": SIDE_SELL}


class FrameParser(RecordParser):
    """Parses one server frame at a time into a caller-owned record buffer.

    ``symbols`` maps wire symbols to instrument ids; the provider id, venue id and data class
    are the same for every record of one provider connection.
    """

    __slots__ = ("symbols",)

    def __init__(
        self, symbols: Mapping[str, int], provider: int, venue: int, data_class: int
    ) -> None:
        super().__init__(provider, venue, data_class)
        self.symbols = dict(symbols)

    @staticmethod
    def wire_symbol(sub: Subscription) -> str:
        return sub.instrument  # the simulator speaks canonical names

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        """Parse ``data`` (bytes-like) into ``out[start:]``; records written or a result code."""
        try:
            frame = SERVER_FRAME_DECODER.decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self.error = str(exc)
            return PARSE_ERROR
        if type(frame) is not Batch:
            if type(frame) is Heartbeat:
                return HEARTBEAT
            self.control = frame
            return CONTROL
        events = frame.events
        if start + 2 * len(events) > len(out):
            # Exact count only when the cheap upper bound does not fit.
            need = sum(1 if type(e) is Trade else 2 for e in events)
            if start + need > len(out):
                self.needed = need
                return NEED_SPACE
        if out is not self._out:
            self._out = out
            self._u8 = out.view(np.uint8)
        buf = self._u8
        pack = _RECORD.pack_into
        syms = self.symbols
        prov = self.provider
        venue = self.venue
        dc = self.data_class
        off = start << 6
        try:
            for e in events:
                inst = syms[e.s]
                if type(e) is Trade:
                    pack(buf, off, e.T, e.P, ts_receive, e.p, e.q, e.seq, inst, prov, venue,
                         KIND_TRADE, dc, _SIDES[e.side], 0, 0)  # fmt: skip
                    off += 64
                else:
                    t = e.T
                    p = e.P
                    s = e.seq
                    pack(buf, off, t, p, ts_receive, e.bp, e.bq, s, inst, prov, venue,
                         KIND_BID, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                    pack(buf, off + 64, t, p, ts_receive, e.ap, e.aq, s, inst, prov, venue,
                         KIND_ASK, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                    off += 128
        except KeyError:
            self.error = f"unknown symbol {e.s!r}"
            return PARSE_ERROR
        except struct.error as exc:  # an integer outside int64
            self.error = f"value out of range in {e.s!r} event: {exc}"
            return PARSE_ERROR
        return (off >> 6) - start
