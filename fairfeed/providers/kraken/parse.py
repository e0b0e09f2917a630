"""Kraken spot v2 frames → RECORD_DTYPE records.

The parser contract of :mod:`fairfeed.providers.parsing`: ``parse(data, out, start,
ts_receive)`` writes records at ``out[start:]`` and returns how many, or a negative code. It
never raises for bad input.

Mapping (details in docs/providers/kraken.md):

* ``trade`` (update or snapshot) → one TRADE per element: ``price``, ``qty`` (base asset),
  ``sequence`` = ``trade_id`` (contiguous per symbol: gaps are tracked on it), ``side`` is the
  taker's, ``ts_exchange`` = ``timestamp`` (RFC 3339, exact to the µs), ``ts_provider`` = 0
  (Kraken is the venue itself: there is no second clock);
* ``ticker`` → BID + ASK per element, ``sequence`` = SEQ_NONE; v2 tickers carry no time:
  ``ts_exchange`` = 0 (a ``timestamp`` field, should Kraken add one, is used);
* ``heartbeat`` → HEARTBEAT; ``status``, subscribe / unsubscribe answers, ``pong`` → CONTROL
  (:class:`~.wire.Status`, :class:`~.wire.Answer`, :class:`~.wire.Pong`); other well-formed
  channels or methods → CONTROL :class:`~.wire.Other` (ignored).

A frame is all or nothing: a bad element (unknown symbol or side, a price that is not finite
and > 0, a size that is not finite and >= 0, a bad time stamp) makes the frame a PARSE_ERROR.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import msgspec
import numpy as np

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE, SEQ_NONE, SIDE_BUY, SIDE_SELL
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.kraken.symbols import to_symbol
from fairfeed.providers.kraken.wire import FRAME_DECODER, Answer, Other, Pong, Refusal, Status
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    RECORD_STRUCT,
    RecordParser,
)
from fairfeed.providers.timestamps import iso_to_ns

_INF = math.inf
_SIDES = {"buy": SIDE_BUY, "sell": SIDE_SELL}
_pack = RECORD_STRUCT.pack_into


class KrakenParser(RecordParser):
    """Parses one v2 frame at a time; ``symbols`` maps ``"BTC/USD"`` to instrument ids."""

    __slots__ = ("_last_ns", "_last_ts", "symbols")

    def __init__(
        self, symbols: Mapping[str, int], provider: int, venue: int, data_class: int
    ) -> None:
        super().__init__(provider, venue, data_class)
        self.symbols = {s: int(i) for s, i in symbols.items()}
        self._last_ts = ""  # trades of one match share their time stamp: convert it once
        self._last_ns = 0

    @staticmethod
    def wire_symbol(sub: Subscription) -> str:
        return to_symbol(sub.instrument)

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        try:
            f = FRAME_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            self.error = str(exc)
            return PARSE_ERROR
        ch = f.channel
        items = f.data
        if ch == "trade":
            if items is None:
                self.error = "trade message without data"
                return PARSE_ERROR
            n = len(items)
        elif ch == "ticker":
            if items is None:
                self.error = "ticker message without data"
                return PARSE_ERROR
            n = 2 * len(items)
        elif ch == "heartbeat":
            return HEARTBEAT
        else:
            return self._control(f)
        if start + n > len(out):
            self.needed = n
            return NEED_SPACE
        if out is not self._out:
            self._out = out
            self._u8 = out.view(np.uint8)
        u8 = self._u8
        syms = self.symbols
        prov = self.provider
        venue = self.venue
        dc = self.data_class
        off = start << 6
        it = None
        try:
            if ch == "trade":
                for it in items:
                    p = it.price
                    q = it.qty
                    if not (0.0 < p < _INF and 0.0 <= q < _INF) or it.trade_id < 0:
                        self.error = f"trade without valid price/qty/trade_id: {it.symbol!r}"
                        return PARSE_ERROR
                    ts = it.timestamp
                    if ts != self._last_ts or not ts:
                        self._last_ns = iso_to_ns(ts)
                        self._last_ts = ts
                    _pack(u8, off, self._last_ns, 0, ts_receive, p, q, it.trade_id,
                          syms[it.symbol], prov, venue, KIND_TRADE, dc, _SIDES[it.side],
                          0, 0)  # fmt: skip
                    off += 64
            else:
                for it in items:
                    b, bq, a, aq = it.bid, it.bid_qty, it.ask, it.ask_qty
                    if not (0.0 <= b < _INF and 0.0 <= a < _INF and 0.0 <= bq < _INF
                            and 0.0 <= aq < _INF):  # fmt: skip
                        self.error = f"ticker without valid bid/ask: {it.symbol!r}"
                        return PARSE_ERROR
                    inst = syms[it.symbol]
                    t = iso_to_ns(it.timestamp) if it.timestamp else 0
                    _pack(u8, off, t, 0, ts_receive, b, bq, SEQ_NONE, inst, prov, venue,
                          KIND_BID, dc, 0, 0, 0)  # fmt: skip
                    _pack(u8, off + 64, t, 0, ts_receive, a, aq, SEQ_NONE, inst, prov, venue,
                          KIND_ASK, dc, 0, 0, 0)  # fmt: skip
                    off += 128
        except KeyError as exc:
            self.error = f"unknown symbol or side {exc} in {ch}"
            return PARSE_ERROR
        except ValueError as exc:  # a bad time stamp
            self.error = str(exc)
            return PARSE_ERROR
        except struct.error as exc:
            self.error = f"value out of range in {ch}: {exc}"
            return PARSE_ERROR
        return (off >> 6) - start

    def _control(self, f) -> int:
        m = f.method
        if m in ("subscribe", "unsubscribe"):
            if f.success is None:
                self.error = f"{m} answer without success"
                return PARSE_ERROR
            r = f.result
            self.control = Answer(
                m, f.req_id, f.success,
                r.channel if r is not None else "",
                r.symbol if r is not None else (f.symbol or ""),
                f.error or "",
            )  # fmt: skip
        elif m == "pong":
            self.control = Pong(f.req_id)
        elif f.refusal is not None:
            self.control = Refusal(f.refusal)
        elif f.channel == "status":
            items = f.data or ()
            self.control = Status(items[0].system if items else "")
        elif f.channel or m:
            self.control = Other(f.channel, m)
        else:
            self.error = "neither a channel message nor an answer"
            return PARSE_ERROR
        return CONTROL
