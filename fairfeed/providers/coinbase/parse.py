"""Coinbase frames → RECORD_DTYPE records: Exchange feed (ws-feed) and Advanced Trade.

The parser protocol of :mod:`fairfeed.providers.parsing` (messages: :mod:`.wire`):
``parse(data, out, start, ts_receive)`` writes records into ``out[start:]`` and returns how many,
or one of the result codes :data:`HEARTBEAT`, :data:`CONTROL`, :data:`PARSE_ERROR`,
:data:`NEED_SPACE` (reason in ``.error``, control message in ``.control``, room needed in
``.needed``). It never raises for bad input; a malformed frame writes nothing the caller keeps.

How (the simulator parser's measured choice, bench/test_bench_parse.py; Coinbase costs in
bench/test_bench_coinbase.py): one msgspec typed decode per frame into a Struct
holding only the fields we use (unknown fields, such as level-2 arrays, are skipped in C),
``strict=False`` so Coinbase's string numbers (``"14.7775"``, ``"1068572090"``) become float and
int in C while decoding, exactly as ``float(str)``; one ``struct.pack_into`` per record.
Timestamps go through :func:`iso_to_ns`, exact to the nanosecond (no float on the way).

Semantics (details and the evidence in docs/providers/coinbase.md):

* Exchange feed: ``match`` → one TRADE (``last_match``, the last trade before the subscription,
  sent on every (re)connect, is history: skipped); ``side`` is the maker's, the taker is the
  opposite. ``sequence`` → record ``sequence`` (the per-product venue sequence), ``trade_id`` →
  ``reserved`` (low 32 bits); with ``trade_sequence=True`` the trade id goes to ``sequence``
  instead (contiguous per product: what a gap tracker wants when only ``matches`` is
  subscribed, since the venue sequence also counts order-book messages we do not receive).
  ``ticker`` → BID + ASK with the ticker's ``sequence``. ``heartbeat`` → one HEARTBEAT record
  for its product (sequence = venue sequence, reserved = ``last_trade_id``). ``time`` is the
  only clock on this feed: ``ts_exchange``; ``ts_provider`` stays 0 except on heartbeats.
* Advanced Trade: ``market_trades`` → TRADEs (``side`` is the maker's here too: measured on the
  capture), in trade order (the wire lists newest first), ``sequence`` = ``trade_id``;
  ``snapshot`` events (recent history sent on subscribe) are skipped unless
  ``snapshot_trades=True``. ``ticker``/``ticker_batch`` → BID + ASK, ``sequence`` =
  ``sequence_num``. ``heartbeats`` → one HEARTBEAT record (NO_INSTRUMENT, sequence =
  ``heartbeat_counter``). Trade ``time`` → ``ts_exchange``; the message ``timestamp`` →
  ``ts_provider``. ``sequence_num`` numbers every message of one connection (all channels): a
  jump yields a GAP record (NO_INSTRUMENT, ``sequence`` = first number after the gap, ``size``
  = numbers missed) ahead of the message's own records, counted in the parser's ``gaps`` /
  ``missed`` totals. Call :meth:`reset` on reconnect.

Both feeds write heartbeat records themselves (not the HEARTBEAT code): the ``heartbeats``
total counts the heartbeat messages, for the worker's counters.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping

import msgspec
import numpy as np

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_TRADE,
    NO_INSTRUMENT,
    RECORD_DTYPE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.hotpath.coinbasescan import PREFIX as _TRADES_PREFIX
from fairfeed.hotpath.coinbasescan import scan_market_trades_nb
from fairfeed.hotpath.dispatch import entry_point
from fairfeed.hotpath.jsonscan import StreamTable
from fairfeed.providers.coinbase.symbols import advanced_data_product, to_product_id
from fairfeed.providers.coinbase.wire import ADVANCED_DECODER, EXCHANGE_DECODER
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    RECORD_STRUCT,
    RecordParser,
)
from fairfeed.providers.timestamps import go_time_to_ns, iso_to_ns

__all__ = [
    "CONTROL",
    "HEARTBEAT",
    "NEED_SPACE",
    "PARSE_ERROR",
    "AdvancedTradeParser",
    "ExchangeFeedParser",
    "iso_to_ns",
]

_RECORD = RECORD_STRUCT
_INF = math.inf
_U32 = 0xFFFFFFFF

# --- Exchange feed (ws-feed) -----------------------------------------------------------------


# Exchange feed `side` is the maker's: the taker is the other side.
_EX_TAKER = {"buy": SIDE_SELL, "sell": SIDE_BUY}
_EX_CONTROL = frozenset(("subscriptions", "error"))


class _Base(RecordParser):
    __slots__ = ("symbols",)

    def __init__(
        self, symbols: Mapping[str, int], provider: int, venue: int, data_class: int
    ) -> None:
        super().__init__(provider, venue, data_class)
        self.symbols = dict(symbols)  # Coinbase product id → instrument id

    @staticmethod
    def wire_symbol(sub: Subscription) -> str:
        return to_product_id(sub.instrument)


class ExchangeFeedParser(_Base):
    """Coinbase Exchange feed (``wss://ws-feed.exchange.coinbase.com``) frames → records."""

    __slots__ = ("trade_sequence",)

    def __init__(
        self,
        symbols: Mapping[str, int],
        provider: int,
        venue: int,
        data_class: int,
        trade_sequence: bool = False,
    ) -> None:
        super().__init__(symbols, provider, venue, data_class)
        self.trade_sequence = trade_sequence

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        """Parse ``data`` (bytes-like or str) into ``out[start:]``; records or a result code."""
        try:
            m = EXCHANGE_DECODER.decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self.error = str(exc)
            return PARSE_ERROR
        t = m.type
        if t == "match":
            kind = KIND_TRADE
        elif t == "last_match":
            # History, not news: sent on every (re)connect, possibly minutes old, and already
            # published if we saw it live. The gap tracker needs it not: the first live match
            # after a reconnect is compared with the last trade id seen before it.
            return 0
        elif t == "ticker":
            kind = KIND_BID
        elif t == "heartbeat":
            kind = KIND_HEARTBEAT
        elif t in _EX_CONTROL:
            self.control = m
            return CONTROL
        else:
            return 0  # level2, snapshot, l2update, status, full-channel messages...: not ours
        need = 2 if kind == KIND_BID else 1
        if start + need > len(out):
            self.needed = need
            return NEED_SPACE
        inst = self.symbols.get(m.product_id)
        if inst is None:
            self.error = f"{t}: unknown product {m.product_id!r}"
            return PARSE_ERROR
        seq = m.sequence
        if seq < 0:
            self.error = f"{t}: missing sequence"
            return PARSE_ERROR
        try:
            ts = iso_to_ns(m.time)
        except ValueError:
            self.error = f"{t}: bad time {m.time!r}"
            return PARSE_ERROR
        buf = self._buffer(out)
        off = start << 6
        prov, venue, dc = self.provider, self.venue, self.data_class
        try:
            if kind == KIND_TRADE:
                side = _EX_TAKER.get(m.side)
                price = m.price
                size = m.size
                tid = m.trade_id
                if side is None or not 0.0 < price < _INF or not 0.0 <= size < _INF or tid < 0:
                    self.error = f"{t}: bad side, price, size or trade_id"
                    return PARSE_ERROR
                if self.trade_sequence:
                    _RECORD.pack_into(buf, off, ts, 0, ts_receive, price, size, tid, inst, prov,
                                      venue, KIND_TRADE, dc, side, 0, seq & _U32)  # fmt: skip
                else:
                    _RECORD.pack_into(buf, off, ts, 0, ts_receive, price, size, seq, inst, prov,
                                      venue, KIND_TRADE, dc, side, 0, tid & _U32)  # fmt: skip
                return 1
            if kind == KIND_BID:
                bp, ap, bq, aq = m.best_bid, m.best_ask, m.best_bid_size, m.best_ask_size
                if not (0.0 < bp < _INF and 0.0 < ap < _INF and 0.0 <= bq < _INF
                        and 0.0 <= aq < _INF):  # fmt: skip
                    self.error = "ticker: bad best_bid/best_ask or sizes"
                    return PARSE_ERROR
                tid = m.trade_id & _U32 if m.trade_id >= 0 else 0
                _RECORD.pack_into(buf, off, ts, 0, ts_receive, bp, bq, seq, inst, prov, venue,
                                  KIND_BID, dc, SIDE_UNKNOWN, 0, tid)  # fmt: skip
                _RECORD.pack_into(buf, off + 64, ts, 0, ts_receive, ap, aq, seq, inst, prov,
                                  venue, KIND_ASK, dc, SIDE_UNKNOWN, 0, tid)  # fmt: skip
                return 2
            last = m.last_trade_id & _U32 if m.last_trade_id >= 0 else 0
            _RECORD.pack_into(buf, off, ts, ts, ts_receive, 0.0, 0.0, seq, inst, prov, venue,
                              KIND_HEARTBEAT, dc, SIDE_UNKNOWN, 0, last)  # fmt: skip
            self.heartbeats += 1
            return 1
        except struct.error as exc:  # an integer outside int64
            self.error = f"{t}: value out of range: {exc}"
            return PARSE_ERROR


# --- Advanced Trade --------------------------------------------------------------------------


_AT_MAKER_TAKER = {"BUY": SIDE_SELL, "SELL": SIDE_BUY}  # `side` is the maker's
_AT_AS_IS = {"BUY": SIDE_BUY, "SELL": SIDE_SELL}
_AT_TICKER = frozenset(("ticker", "ticker_batch"))
_PREFIX_LEN = len(_TRADES_PREFIX)


class AdvancedTradeParser(_Base):
    """Coinbase Advanced Trade market data (``wss://advanced-trade-ws.coinbase.com``) → records.

    ``side_is_maker`` (default True, measured on the capture: see docs/providers/coinbase.md)
    says the wire ``side`` is the maker's, so the taker side is its opposite.

    ``symbols`` maps the subscribed product ids. A -USDC product's data arrives under the
    matching -USD product's id (:func:`advanced_data_product`): it is read as the -USDC
    instrument, or, when the -USD product is subscribed too, written for both.
    """

    __slots__ = ("_checked", "_entry", "_last_seq", "_out_ok", "_pending",
                 "_side_is_maker", "_sides", "_table", "_twin_ids", "_twins",
                 "snapshot_trades")  # fmt: skip

    def __init__(
        self,
        symbols: Mapping[str, int],
        provider: int,
        venue: int,
        data_class: int,
        snapshot_trades: bool = False,
        side_is_maker: bool = True,
    ) -> None:
        super().__init__(symbols, provider, venue, data_class)
        # instrument id of a -USD product -> that of its -USDC alias, both subscribed
        self._twins: dict[int, int] = {}
        for pid, iid in symbols.items():
            data = advanced_data_product(pid)
            if data == pid:
                continue
            if data in symbols:
                self._twins[symbols[data]] = iid
            else:
                self.symbols[data] = iid
        self._twin_ids = np.array(sorted(self._twins), np.uint32)
        self.snapshot_trades = bool(snapshot_trades)
        self._sides = _AT_MAKER_TAKER if side_is_maker else _AT_AS_IS
        self._side_is_maker = bool(side_is_maker)
        self._table: StreamTable | None = None  # the scanner's product table, built at first use
        self._entry: Callable[..., int] | None = None  # the scanner's entry, made at first use
        self._checked: np.ndarray | None = None  # the last buffer checked for the entry...
        self._out_ok = False  # ... and whether it has the layout the entry takes
        self._last_seq = -1  # last sequence_num of this connection, -1 = none yet
        self._pending: tuple[int, int] | None = None  # (seq after, missed) not yet written

    def reset(self) -> None:
        """Forget the connection's sequence_num: call on every (re)connect."""
        self._last_seq = -1
        self._pending = None

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        """Parse ``data`` (bytes-like or str) into ``out[start:]``; records or a result code.

        ``market_trades`` messages go through the Numba scanner first (no Python object per
        trade); what it declines, and every other message, through the msgspec decode below."""
        if data[:_PREFIX_LEN] == _TRADES_PREFIX:
            n = self._scan(data, out, start, ts_receive)
            if n >= 0:
                return n
        return self.parse_msgspec(data, out, start, ts_receive)

    def parse_msgspec(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        """:meth:`parse` by the msgspec decode alone: every message, and the scanner's
        reference."""
        try:
            m = ADVANCED_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            self.error = str(exc)
            return PARSE_ERROR
        ch = m.channel
        # Gap check over every message of the connection, whatever its channel.
        seq = m.sequence_num
        last = self._last_seq
        gap = self._pending
        if last >= 0 and seq > last + 1:
            gap = (seq, seq - last - 1 + (gap[1] if gap else 0))
        if ch == "market_trades":
            kind = KIND_TRADE
        elif ch in _AT_TICKER:
            kind = KIND_BID
        elif ch == "heartbeats":
            kind = KIND_HEARTBEAT
        elif ch == "subscriptions" or (not ch and m.type == "error"):
            self.control = m
            self._advance(seq, gap)
            return CONTROL
        elif not ch:
            self.error = "no channel"
            return PARSE_ERROR
        else:
            self._advance(seq, gap)  # l2_data, candles, status, ...: not ours
            if gap is None:
                return 0
            kind = 0
        try:
            ts_prov = iso_to_ns(m.timestamp)
        except ValueError:
            self.error = f"{ch}: bad timestamp {m.timestamp!r}"
            return PARSE_ERROR
        events = m.events
        # Room: exact count (cheap: lengths only).
        need = 0 if gap is None else 1
        if kind == KIND_TRADE:
            snap = self.snapshot_trades
            for e in events:
                if snap or e.type != "snapshot":
                    need += len(e.trades)
        elif kind == KIND_BID:
            for e in events:
                need += 2 * len(e.tickers)
        elif kind == KIND_HEARTBEAT:
            need += len(events)
        if self._twins and kind != KIND_HEARTBEAT:
            need *= 2  # at most: every record twice
        if start + need > len(out):
            self.needed = need
            return NEED_SPACE
        buf = self._buffer(out)
        pack = _RECORD.pack_into
        prov, venue, dc = self.provider, self.venue, self.data_class
        syms = self.symbols
        off = start << 6
        try:
            if gap is not None:
                g_seq, g_missed = gap
                pack(buf, off, 0, ts_prov, ts_receive, 0.0, float(g_missed), g_seq, NO_INSTRUMENT,
                     prov, venue, KIND_GAP, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                off += 64
            if kind == KIND_TRADE:
                sides = self._sides
                for e in events:
                    if e.type == "snapshot" and not snap:
                        continue
                    for tr in reversed(e.trades):  # the wire lists the newest first
                        inst = syms.get(tr.product_id)
                        side = sides.get(tr.side)
                        price = tr.price
                        size = tr.size
                        if (inst is None or side is None or not 0.0 < price < _INF
                                or not 0.0 <= size < _INF or tr.trade_id < 0):  # fmt: skip
                            self.error = (f"market_trades: bad product, side, price, size or "
                                          f"trade_id in {tr!r}")  # fmt: skip
                            return PARSE_ERROR
                        t_ex = iso_to_ns(tr.time)
                        pack(buf, off, t_ex, ts_prov, ts_receive, price, size, tr.trade_id,
                             inst, prov, venue, KIND_TRADE, dc, side, 0, 0)  # fmt: skip
                        off += 64
            elif kind == KIND_BID:
                for e in events:
                    for tk in e.tickers:
                        inst = syms.get(tk.product_id)
                        bp, ap = tk.best_bid, tk.best_ask
                        bq, aq = tk.best_bid_quantity, tk.best_ask_quantity
                        ok = 0.0 < bp < _INF and 0.0 < ap < _INF
                        if inst is None or not (ok and 0.0 <= bq < _INF and 0.0 <= aq < _INF):
                            self.error = f"{ch}: bad product, best_bid/best_ask or sizes in {tk!r}"
                            return PARSE_ERROR
                        pack(buf, off, 0, ts_prov, ts_receive, bp, bq, seq, inst, prov, venue,
                             KIND_BID, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                        pack(buf, off + 64, 0, ts_prov, ts_receive, ap, aq, seq, inst, prov,
                             venue, KIND_ASK, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                        off += 128
            elif kind == KIND_HEARTBEAT:
                for e in events:
                    try:
                        ts_ex = go_time_to_ns(e.current_time) if e.current_time else 0
                    except ValueError:
                        ts_ex = 0  # liveness matters, not this clock
                    hb = e.heartbeat_counter if e.heartbeat_counter >= 0 else SEQ_NONE
                    pack(buf, off, ts_ex, ts_prov, ts_receive, 0.0, 0.0, hb, NO_INSTRUMENT, prov,
                         venue, KIND_HEARTBEAT, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                    off += 64
        except ValueError as exc:  # a bad trade time
            self.error = f"{ch}: {exc}"
            return PARSE_ERROR
        except struct.error as exc:  # an integer outside int64
            self.error = f"{ch}: value out of range: {exc}"
            return PARSE_ERROR
        if self._twins and kind != KIND_HEARTBEAT:
            off = self._write_twins(out, start, off >> 6) << 6
        if kind:
            self._advance(seq, None)
        else:
            self._pending = None
        if gap is not None:  # written and kept: count it
            self.gaps += 1
            self.missed += gap[1]
        if kind == KIND_HEARTBEAT and events:
            self.heartbeats += 1
        return (off >> 6) - start

    def _scan(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        """The scanner's records of one ``market_trades`` message, or -1 (declined); the
        connection's numbering advances as :meth:`parse` would.

        Called through its machine-code entry (:func:`~fairfeed.hotpath.dispatch.entry_point`):
        the dispatcher's typing of its 17 arguments cost ~0.4 µs a message, as much as the
        scan of a one-trade message. That entry converts without checking, so only the types it
        was made for reach it: a read-only byte view and a contiguous record buffer."""
        if out is not self._checked:  # a new buffer: checked once
            self._checked = out
            self._out_ok = (out.dtype == RECORD_DTYPE and out.ndim == 1
                            and out.flags.c_contiguous and out.flags.writeable)  # fmt: skip
        if not self._out_ok:
            return -1
        u8 = self._buffer(out)
        try:
            arr = np.frombuffer(data, np.uint8)
        except (BufferError, TypeError, ValueError):  # not one contiguous buffer
            return -1
        if arr.flags.writeable:  # the entry's type: read-only, as a frame's payload view
            arr.flags.writeable = False
        t = self._table
        if t is None:
            t = self._table = StreamTable({p: (i, False) for p, i in self.symbols.items()})
        scan = self._entry
        if scan is None:
            scan = self._entry = entry_point(scan_market_trades_nb, arr, t.names, t.lengths,
                                             t.instrument, t.slots, out, u8, 0, 0, 0, 0,
                                             0, False, False, 0, 0, 0)  # fmt: skip
        gap = self._pending
        n, seq, missed = scan(arr, t.names, t.lengths, t.instrument, t.slots, out, u8, start,
                              ts_receive, self.provider, self.venue, self.data_class,
                              self.snapshot_trades, self._side_is_maker, self._last_seq,
                              gap[0] if gap else -1, gap[1] if gap else 0)  # fmt: skip
        if n < 0:
            return n
        if self._twins:
            if start + 2 * n > len(out):  # the reference's room rule: every record twice
                return -1
            n = self._write_twins(out, start, start + n) - start
        self._last_seq = seq  # as _advance(seq, None): seq >= 0 here
        self._pending = None
        if missed >= 0:  # a gap record written
            self.gaps += 1
            self.missed += missed
        return n

    def _write_twins(self, out: np.ndarray, start: int, end: int) -> int:
        """Copy the records ``out[start:end]`` of a -USD product whose -USDC alias is
        subscribed too, as the alias's; returns the new end."""
        written = out[start:end]
        inst = written["instrument"]
        which = np.flatnonzero(np.isin(inst, self._twin_ids))
        n = len(which)
        if n:
            copies = out[end : end + n]
            copies[:] = written[which]
            ids = copies["instrument"].copy()
            for usd, usdc in self._twins.items():  # a few products: one pass each, not per record
                copies["instrument"][ids == usd] = usdc
        return end + n

    def _advance(self, seq: int, gap: tuple[int, int] | None) -> None:
        """Accept ``seq`` as the connection's last number; keep an unwritten gap for later."""
        if seq >= 0:
            self._last_seq = seq  # lower than before = the server restarted numbering: accept
        self._pending = gap
