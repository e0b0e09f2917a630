"""Binance spot combined-stream frames → RECORD_DTYPE records.

The parser contract of :mod:`fairfeed.providers.parsing`: ``parse(data, out, start,
ts_receive)`` writes records at ``out[start:]`` and returns how many, or a negative code
(:data:`CONTROL` with the answer in ``.control``, :data:`PARSE_ERROR` with the reason in
``.error``, :data:`NEED_SPACE`). It never raises for bad input.

Mapping (details in docs/providers/binance.md):

* ``trade`` → one TRADE: price ``p``, size ``q`` (base asset), ``sequence`` = trade id ``t``
  (contiguous per symbol: gaps are tracked on it), taker side SELL when ``m`` (buyer is maker)
  else BUY, ``ts_exchange`` = ``T`` (trade time), ``ts_provider`` = ``E`` (event time), ms → ns.
* ``aggTrade`` → one TRADE per aggregate: same fields, ``sequence`` = aggregate id ``a``, which
  is contiguous per symbol too, so a gap counts the *aggregates* (messages) missed. ``f``/``l``
  (the underlying trade ids) are not needed for that and are not stored.
* ``bookTicker`` → BID + ASK with ``sequence`` = update id ``u`` (not contiguous: it numbers
  every book change, the ticker shows only top-of-book ones, so it is not gap-tracked); spot
  book tickers carry no time: ``ts_exchange`` = ``ts_provider`` = 0 (unknown).
* ``markPrice@1s`` (USD-M, derivatives option) → MARK (``p``) + INDEX (``i``) + FUNDING (rate
  ``r``, ``size`` NaN: Binance publishes no predicted rate, ``reserved`` = next funding time
  ``T`` in seconds); a dated contract (``"r":""``, ``"T":0``) has no FUNDING record. No
  sequence; ``ts_exchange`` = ``ts_provider`` = ``E`` (the exchange computes the mark).
* ``forceOrder`` → one LIQUIDATION: price ``o.ap`` (average fill price), size ``o.z`` (filled,
  base asset: USD-M contracts are linear), ``side`` = ``o.S``, ``ts_exchange`` = ``o.T``,
  ``ts_provider`` = ``E``. A forced order with nothing filled yet (``z`` 0) is no print: no
  record.
* ``{"result":…,"id":n}`` → CONTROL :class:`~.wire.Ack`; errors → CONTROL :class:`~.wire.Error`.

Prices must be finite and > 0 (book prices >= 0), sizes finite and >= 0: anything else (a
``"nan"`` string, a missing field) is a PARSE_ERROR, never a record.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.hotpath.binancescan import StreamTable, scan_binance_nb
from fairfeed.providers.binance.symbols import DERIVATIVE_STREAMS, split_stream, stream_name
from fairfeed.providers.binance.wire import (
    AGG_BATCH_DECODER,
    AGG_FRAME_DECODER,
    DERIVATIVE_FRAME_DECODER,
    TRADE_BATCH_DECODER,
    TRADE_FRAME_DECODER,
    Ack,
    Error,
)
from fairfeed.providers.parsing import (
    CONTROL,
    NEED_SPACE,
    PARSE_ERROR,
    PER_MESSAGE,
    RECORD_STRUCT,
    RecordParser,
)

_INF = math.inf
_NAN = math.nan
_MS = 1_000_000
# What a stream's messages are, by the kind part of its name.
_TRADE, _BOOK, _MARK, _FORCE = range(4)
_STREAM_CODES = {
    "trade": _TRADE,
    "aggTrade": _TRADE,
    "bookTicker": _BOOK,
    "markPrice@1s": _MARK,
    "forceOrder": _FORCE,
}
_NEED = (2, 2, 3, 1)  # records a message may write, by code (a mark: mark, index, funding)
_SIDES = {"BUY": SIDE_BUY, "SELL": SIDE_SELL}
_pack = RECORD_STRUCT.pack_into


class BinanceParser(RecordParser):
    """Parses one combined-stream frame at a time for one connection's streams.

    ``streams`` maps stream names (``"btcusdt@trade"``, ``"btcusdt@bookTicker"``...) to
    instrument ids; ``agg`` selects the ``aggTrade`` feed's decoding.
    """

    __slots__ = ("_batch_decoder", "_book", "_decoder", "_table", "agg", "streams")
    batch_records = 2  # a book ticker: bid and ask

    def __init__(
        self,
        streams: Mapping[str, int],
        provider: int,
        venue: int,
        data_class: int,
        *,
        agg: bool = False,
    ) -> None:
        super().__init__(provider, venue, data_class)
        self.streams = {s: int(i) for s, i in streams.items()}
        # stream -> (instrument id, what its messages are, records they may need): one lookup
        self._book = {}
        for s, i in self.streams.items():
            what = _STREAM_CODES[split_stream(s)[1]]
            self._book[s] = (i, what, _NEED[what])
        self.agg = agg
        self._decoder = AGG_FRAME_DECODER if agg else TRADE_FRAME_DECODER
        self._batch_decoder = AGG_BATCH_DECODER if agg else TRADE_BATCH_DECODER
        self._table: StreamTable | None = None  # built at the first batch

    @classmethod
    def for_subscriptions(
        cls,
        subs: Sequence[Subscription],
        *,
        agg: bool = False,
        market: str = "spot",
        derivatives: bool = False,
    ) -> BinanceParser:
        """Two streams per subscription: its trade feed (``aggTrade`` with ``agg``) and
        ``bookTicker``, named for ``market`` (``"spot"``, ``"usdm"``); with ``derivatives``
        also ``markPrice@1s`` and ``forceOrder`` (USD-M)."""
        first = subs[0] if subs else None
        kinds = ("aggTrade" if agg else "trade", "bookTicker")
        if derivatives:
            kinds += DERIVATIVE_STREAMS
        return cls(
            {stream_name(s.instrument, k, market): s.instrument_id for s in subs for k in kinds},
            first.provider_id if first else 0,
            first.venue_id if first else 0,
            first.class_code if first else 0,
            agg=agg,
        )

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        try:
            f = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            self.error = str(exc)
            return PARSE_ERROR
        if f.data is None:
            return self._control(f)
        entry = self._book.get(f.stream)
        if entry is None:
            self.error = f"unknown stream {f.stream!r}"
            return PARSE_ERROR
        inst, what, need = entry
        if start + need > len(out):
            self.needed = need
            return NEED_SPACE
        if what >= _MARK:
            try:
                return self._derivative(data, what, inst, self._buffer(out), start << 6, ts_receive)
            except ValueError as exc:  # a non-numeric funding rate text
                self.error = f"bad number: {exc}"
                return PARSE_ERROR
            except struct.error as exc:  # a time outside int64 once in ns (E = 9.3e12 ms)
                self.error = f"value out of range: {exc}"
                return PARSE_ERROR
        return self._write(f.data, inst, what, self._buffer(out), start << 6, ts_receive)

    def parse_batch(
        self, messages: Sequence[bytes], out: np.ndarray, start: int, ts_receive: int
    ) -> int:
        """All of one read's messages at once: by the Numba scanner when they have Binance's
        exact shape (no Python object per message), else in one decode of them joined into one
        JSON array, which holds exactly one object per message only if each message is one
        object (a message ``{…},{…}`` makes the count differ, and brackets cannot balance
        across two messages). Derivatives messages (about one per second and symbol) are not
        in the scanner's table: a read holding one goes message by message."""
        t = self.stream_table()
        data = np.frombuffer(b"".join(messages), np.uint8)
        ends = np.fromiter(map(len, messages), np.int64, len(messages)).cumsum()
        n = scan_binance_nb(data, ends, t.names, t.lengths, t.instrument, t.is_book, t.slots,
                            out, start, ts_receive, self.provider, self.venue, self.data_class,
                            self.agg)  # fmt: skip
        if n >= 0:
            return n
        try:
            frames = self._batch_decoder.decode(b"[" + b",".join(messages) + b"]")
        except msgspec.DecodeError:
            return PER_MESSAGE
        if len(frames) != len(messages):
            return PER_MESSAGE
        u8 = self._buffer(out)
        off = start << 6
        book = self._book
        write = self._write
        for f in frames:
            entry = book.get(f.stream) if f.data is not None else None
            if entry is None or entry[1] >= _MARK:
                return PER_MESSAGE
            r = write(f.data, entry[0], entry[1], u8, off, ts_receive)
            if r < 0:
                return PER_MESSAGE
            off += r << 6
        return (off >> 6) - start

    def stream_table(self) -> StreamTable:
        """The scanner's table of this parser's trade and book-ticker streams (built once)."""
        if self._table is None:
            market = {s: (i, what == _BOOK) for s, (i, what, _) in self._book.items()
                      if what < _MARK}  # fmt: skip
            self._table = StreamTable(market)
        return self._table

    def _write(self, d, inst: int, what: int, u8: np.ndarray, off: int, ts_receive: int) -> int:
        """The records of one decoded trade or book-ticker message ``d`` of instrument
        ``inst`` at byte ``off`` of ``u8``: how many, or PARSE_ERROR."""
        try:
            if what == _BOOK:
                b, bq, bs, aq = d.b, d.B, d.a, d.A
                if type(bs) is str:  # the aggTrade feed's Struct keeps `a` as text
                    bs = float(bs)
                if (
                    not (
                        0.0 <= b < _INF
                        and 0.0 <= bs < _INF
                        and 0.0 <= bq < _INF
                        and 0.0 <= aq < _INF
                    )
                    or d.u < 0
                ):
                    self.error = "book ticker without valid b/B/a/A/u"
                    return PARSE_ERROR
                seq = d.u
                # futures book tickers carry T (transaction) and E (event) times; spot's none
                t_ex, t_pr = d.T * _MS, d.E * _MS
                _pack(u8, off, t_ex, t_pr, ts_receive, b, bq, seq, inst, self.provider,
                      self.venue, KIND_BID, self.data_class, 0, 0, 0)  # fmt: skip
                _pack(u8, off + 64, t_ex, t_pr, ts_receive, bs, aq, seq, inst, self.provider,
                      self.venue, KIND_ASK, self.data_class, 0, 0, 0)  # fmt: skip
                return 2
            p = d.p
            q = d.q
            seq = d.a if self.agg else d.t
            if not (0.0 < p < _INF and 0.0 <= q < _INF) or type(seq) is not int or seq < 0:
                self.error = "trade without valid p/q/id"
                return PARSE_ERROR
            _pack(u8, off, d.T * _MS, d.E * _MS, ts_receive, p, q, seq, inst,
                  self.provider, self.venue, KIND_TRADE, self.data_class,
                  SIDE_SELL if d.m else SIDE_BUY, 0, 0)  # fmt: skip
            return 1
        except ValueError as exc:  # a non-numeric ask price text (aggTrade feed)
            self.error = f"bad number: {exc}"
            return PARSE_ERROR
        except struct.error as exc:  # a timestamp or id outside int64
            self.error = f"value out of range: {exc}"
            return PARSE_ERROR

    def _derivative(
        self, data, what: int, inst: int, u8: np.ndarray, off: int, ts_receive: int
    ) -> int:
        """A mark-price or liquidation message at byte ``off`` of ``u8``."""
        try:
            d = DERIVATIVE_FRAME_DECODER.decode(data).data
        except msgspec.DecodeError as exc:
            self.error = str(exc)
            return PARSE_ERROR
        head = (inst, self.provider, self.venue)
        if what == _MARK:
            mark, index, rate = d.p, d.i, d.r
            if not (0.0 < mark < _INF and 0.0 < index < _INF) or d.E <= 0:
                self.error = "mark price without valid p/i/E"
                return PARSE_ERROR
            t = d.E * _MS
            _pack(u8, off, t, t, ts_receive, mark, 0.0, SEQ_NONE, *head, KIND_MARK,
                  self.data_class, 0, 0, 0)  # fmt: skip
            _pack(u8, off + 64, t, t, ts_receive, index, 0.0, SEQ_NONE, *head, KIND_INDEX,
                  self.data_class, 0, 0, 0)  # fmt: skip
            if rate == "":  # a dated contract: no funding
                return 2
            if type(rate) is str:
                rate = float(rate)
            if not (-_INF < rate < _INF) or d.T <= 0:
                self.error = "mark price without valid r/T"
                return PARSE_ERROR
            _pack(u8, off + 128, t, t, ts_receive, rate, _NAN, SEQ_NONE, *head, KIND_FUNDING,
                  self.data_class, 0, 0, d.T // 1000)  # fmt: skip
            return 3
        o = d.o
        side = _SIDES.get(o.S, 0) if o is not None else 0
        if not side or not (0.0 < o.ap < _INF and 0.0 <= o.z < _INF) or o.T <= 0 or d.E <= 0:
            self.error = "liquidation without valid o.S/o.ap/o.z/o.T/E"
            return PARSE_ERROR
        if o.z == 0.0:
            return 0
        _pack(u8, off, o.T * _MS, d.E * _MS, ts_receive, o.ap, o.z, SEQ_NONE, *head,
              KIND_LIQUIDATION, self.data_class, side, 0, 0)  # fmt: skip
        return 1

    def _control(self, f) -> int:
        if f.stream:
            self.error = f"stream {f.stream!r} without data"
            return PARSE_ERROR
        if f.error is not None:
            self.control = Error(f.id, f.error.code, f.error.msg)
        elif f.code is not None:
            self.control = Error(f.id, f.code, f.msg or "")
        elif f.id is not None:
            self.control = Ack(f.id)
        else:
            self.error = "neither a stream message nor an answer"
            return PARSE_ERROR
        return CONTROL
