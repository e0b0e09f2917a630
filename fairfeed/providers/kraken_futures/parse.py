"""Kraken Futures v1 frames → RECORD_DTYPE records.

The parser contract of :mod:`fairfeed.providers.parsing`: ``parse(data, out, start,
ts_receive)`` writes records at ``out[start:]`` and returns how many, or a negative code. It
never raises for bad input.

Mapping (details in docs/providers/kraken_futures.md); sizes are base units (linear: contracts
× contract size; inverse: contracts × contract size / price), ``ts_provider`` = 0 (Kraken is
the venue):

* ``trade`` → TRADE: ``price``, ``qty``, ``sequence`` = ``seq`` (contiguous per product: gaps
  are tracked on it), ``side`` is the taker's, ``ts_exchange`` = ``time``; a fill of ``type``
  ``liquidation`` is also a LIQUIDATION right after it (same price, size, side and time,
  ``sequence`` none): Kraken's liquidation engine takes liquidity, so the taker side is the
  forced order's (sell: a long was closed). ``fill``, ``termination`` and ``block`` fills are
  trades only;
* ``trade_snapshot`` → nothing: recent trades replayed on subscribing are history (their live
  copies were published, or the gap tracker reports them missed);
* ``ticker`` → with ``ts_exchange`` = ``time``, ``sequence`` none, each where present:
  BID + ASK (``bid``/``bid_size``, ``ask``/``ask_size``), MARK (``markPrice``), INDEX
  (``index``), FUNDING on perpetuals (``price`` = ``relative_funding_rate``, ``size`` =
  ``relative_funding_rate_prediction``, both 0 when left out — Kraken omits zeros —,
  ``reserved`` = ``next_funding_rate_time`` in seconds), OPEN_INTEREST (``openInterest``; an
  inverse product's by the mark price);
* ``ticker_lite`` → BID + ASK, size 0 (not published) and ``ts_exchange`` 0 (no time);
* ``heartbeat`` → HEARTBEAT; events (``info``, answers, ``error``, ``alert``) → CONTROL
  (:mod:`.wire`); other feeds (``book``) → CONTROL :class:`~.wire.Other` (ignored).

A frame is all or nothing: an unknown product or side, a price that is not finite and > 0, a
size that is not finite and >= 0 or a time out of range makes it a PARSE_ERROR.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Self

import msgspec
import numpy as np

from fairfeed.core.records import (
    CLASS_PERPETUAL,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.kraken_futures.symbols import contract, product_id
from fairfeed.providers.kraken_futures.wire import (
    ANSWER_EVENTS,
    FRAME_DECODER,
    Alert,
    Answer,
    Error,
    Info,
    Other,
)
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    RECORD_STRUCT,
    RecordParser,
)

_INF = math.inf
_SIDES = {"buy": SIDE_BUY, "sell": SIDE_SELL}
_MS = 1_000_000
_pack = RECORD_STRUCT.pack_into


class Product:
    """What the parser needs of one subscribed product."""

    __slots__ = ("data_class", "instrument", "inverse", "size")

    def __init__(self, instrument: int, data_class: int, inverse: bool, size: float) -> None:
        self.instrument = instrument
        self.data_class = data_class
        self.inverse = inverse
        self.size = size  # contract size: base units (linear), quote units (inverse)

    def base(self, contracts: float, price: float) -> float:
        """``contracts`` in base units (an inverse contract's at ``price``)."""
        if self.inverse:
            return contracts * self.size / price if price > 0.0 else 0.0
        return contracts * self.size


class KrakenFuturesParser(RecordParser):
    """Parses one v1 frame at a time; ``products`` maps ``"PF_XBTUSD"`` to a :class:`Product`."""

    __slots__ = ("products",)

    def __init__(self, products: Mapping[str, Product], provider: int, venue: int) -> None:
        super().__init__(provider, venue, 0)
        self.products = {p.upper(): v for p, v in products.items()}

    @classmethod
    def for_subscriptions(
        cls,
        subs: Sequence[Subscription],
        products: Mapping[str, str] | None = None,
        contracts: Mapping[str, str | float] | None = None,
    ) -> Self:
        """The connection's products (names by rule or ``products``, contract sizes from
        ``contracts``: the provider's options)."""
        table = {}
        for s in subs:
            pid = product_id(s.instrument, products)
            inverse, size = contract(pid, contracts)
            table[pid] = Product(s.instrument_id, s.class_code, inverse, size)
        first = subs[0] if subs else None
        return cls(table, first.provider_id if first else 0, first.venue_id if first else 0)

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        try:
            f = FRAME_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            self.error = str(exc)
            return PARSE_ERROR
        feed = f.feed
        if f.event:
            return self._control(f)
        if feed == "trade":
            n = 2 if f.type == "liquidation" else 1
        elif feed == "ticker":
            n = 6
        elif feed == "ticker_lite":
            n = 2
        elif feed == "heartbeat":
            return HEARTBEAT
        elif feed == "trade_snapshot":
            return 0
        elif feed:
            self.control = Other(feed, "")
            return CONTROL
        else:
            self.error = "neither a feed message nor an event"
            return PARSE_ERROR
        if start + n > len(out):
            self.needed = n
            return NEED_SPACE
        u8 = self._buffer(out)
        prov = self.provider
        venue = self.venue
        off = start << 6
        try:
            p = self.products[f.product_id]
            inst, dc = p.instrument, p.data_class
            if feed == "trade":
                price, qty = f.price, f.qty
                if not (0.0 < price < _INF and 0.0 <= qty < _INF) or f.seq < 0 or f.time < 0:
                    self.error = f"trade without valid price/qty/seq/time: {f.product_id!r}"
                    return PARSE_ERROR
                t, size, side = f.time * _MS, p.base(qty, price), _SIDES[f.side]
                _pack(u8, off, t, 0, ts_receive, price, size, f.seq, inst, prov, venue,
                      KIND_TRADE, dc, side, 0, 0)  # fmt: skip
                if n == 2:  # the liquidation print, unnumbered like every derivatives record
                    _pack(u8, off + 64, t, 0, ts_receive, price, size, SEQ_NONE, inst, prov,
                          venue, KIND_LIQUIDATION, dc, side, 0, 0)  # fmt: skip
                return n
            t = f.time * _MS if f.time > 0 else 0
            b, a = f.bid, f.ask
            if not (0.0 <= b < _INF and 0.0 <= a < _INF):
                self.error = f"{feed} without valid bid/ask: {f.product_id!r}"
                return PARSE_ERROR
            if feed == "ticker_lite":
                bq = aq = 0.0
            else:
                bq, aq = f.bid_size, f.ask_size
                bq = 0.0 if bq != bq else bq  # left out: unknown
                aq = 0.0 if aq != aq else aq
                if not (0.0 <= bq < _INF and 0.0 <= aq < _INF):
                    self.error = f"ticker without valid sizes: {f.product_id!r}"
                    return PARSE_ERROR
                bq, aq = p.base(bq, b), p.base(aq, a)
            _pack(u8, off, t, 0, ts_receive, b, bq, SEQ_NONE, inst, prov, venue, KIND_BID, dc,
                  0, 0, 0)  # fmt: skip
            _pack(u8, off + 64, t, 0, ts_receive, a, aq, SEQ_NONE, inst, prov, venue, KIND_ASK,
                  dc, 0, 0, 0)  # fmt: skip
            off += 128
            if feed == "ticker":
                off = self._derivatives(f, p, u8, off, t, ts_receive)
                if off < 0:
                    return PARSE_ERROR
        except KeyError as exc:
            self.error = f"unknown product or side {exc} in {feed}"
            return PARSE_ERROR
        except struct.error as exc:
            self.error = f"value out of range in {feed}: {exc}"
            return PARSE_ERROR
        return (off >> 6) - start

    def _derivatives(self, f, p: Product, u8: np.ndarray, off: int, t: int, rx: int) -> int:
        """MARK, INDEX, FUNDING, OPEN_INTEREST of a ticker at ``off``; the next offset, or -1."""
        prov, venue, inst, dc = self.provider, self.venue, p.instrument, p.data_class
        mark, index, oi = f.markPrice, f.index, f.openInterest
        for value, kind in ((mark, KIND_MARK), (index, KIND_INDEX)):
            if value != value:
                continue  # left out
            if not 0.0 < value < _INF:
                self.error = f"ticker with a bad {'mark' if kind == KIND_MARK else 'index'} "
                self.error += f"price: {f.product_id!r}"
                return -1
            _pack(u8, off, t, 0, rx, value, 0.0, SEQ_NONE, inst, prov, venue, kind, dc, 0, 0, 0)
            off += 64
        rate, pred, nxt = (f.relative_funding_rate, f.relative_funding_rate_prediction,
                           f.next_funding_rate_time)  # fmt: skip
        if dc == CLASS_PERPETUAL and (rate == rate or pred == pred or nxt == nxt):
            rate = 0.0 if rate != rate else rate  # Kraken leaves zero rates out
            pred = 0.0 if pred != pred else pred
            if not (-_INF < rate < _INF and -_INF < pred < _INF):
                self.error = f"ticker with a bad funding rate: {f.product_id!r}"
                return -1
            at = 0
            if nxt == nxt:
                if not 0.0 <= nxt < 1e15:
                    self.error = f"ticker with a bad next_funding_rate_time: {f.product_id!r}"
                    return -1
                # an epoch time in ms; a small value would be the time *until* it (as one
                # version of the documentation words it): then relative to the ticker's time
                ms = nxt if nxt >= 1e11 else (f.time + nxt if f.time > 0 else 0.0)
                at = int(ms) // 1000
            _pack(u8, off, t, 0, rx, rate, pred, SEQ_NONE, inst, prov, venue, KIND_FUNDING, dc,
                  0, 0, at)  # fmt: skip
            off += 64
        if oi == oi:
            if not 0.0 <= oi < _INF:
                self.error = f"ticker with a bad openInterest: {f.product_id!r}"
                return -1
            if not p.inverse or mark == mark:
                _pack(u8, off, t, 0, rx, 0.0, p.base(oi, mark), SEQ_NONE, inst, prov, venue,
                      KIND_OPEN_INTEREST, dc, 0, 0, 0)  # fmt: skip
                off += 64
        return off

    def _control(self, f) -> int:
        e = f.event
        if e in ANSWER_EVENTS:
            self.control = Answer(e, f.feed, tuple(f.product_ids or ()))
        elif e == "error":
            self.control = Error(f.message)
        elif e == "alert":
            self.control = Alert(f.message)
        elif e == "info":
            self.control = Info()
        else:
            self.control = Other(f.feed, e)
        return CONTROL
