"""CoinAPI v1 messages → RECORD_DTYPE records.

Same interface as every provider parser (:mod:`fairfeed.providers.parsing`):
``parse(data, out, start, ts_receive)`` writes records at ``out[start:]`` and returns how many,
or HEARTBEAT, CONTROL (``.control`` = the :class:`~.wire.Reconnect` or :class:`~.wire.Error`),
PARSE_ERROR (``.error``) or NEED_SPACE (``.needed``). It never raises for bad input.

How: one msgspec typed decode per frame (CoinAPI sends one message per frame), one
``RECORD_STRUCT.pack_into`` per record. Symbol ids map to ``(instrument, venue, class)`` through
one dict built from the subscriptions (a CoinAPI connection carries many venues and classes).

Semantics:

* ``trade`` → one TRADE: ``price``, ``size`` (base asset amount), ``taker_side`` BUY /
  BUY_ESTIMATED → buy, SELL / SELL_ESTIMATED → sell, anything else → unknown; ``reserved`` =
  :func:`uuid_key` of the trade's ``uuid`` (0 without one): the key that deduplicates a trade
  both sessions of a planned switch deliver (WsAdapter.overlap_key).
* ``quote`` → one BID (``bid_price``, ``bid_size``) and one ASK record with the same clocks and
  sequence. A size of 0 means "unknown" on CoinAPI and is kept as 0.
* Clocks: ``time_exchange`` → ``ts_exchange``, ``time_coinapi`` → ``ts_provider``, the read time
  → ``ts_receive``; ISO-8601 text to integer ns exactly (7 fractional digits on CoinAPI, 0 to 9
  accepted), never through a float.
* ``sequence`` numbers the messages of one (type, symbol_id) for the lifespan of one connection.
  It goes to the record's ``sequence``. The numbering is per symbol id *and* type, while the
  shared gap tracker (WsAdapter.gap_kinds) keys by instrument only — two venues of BTC-USD on one
  connection, or a trade and a quote of one symbol, would interleave — so this parser checks
  contiguity itself per (type, symbol id) and writes a KIND_GAP record (``sequence`` = first
  number after the gap, ``size`` = numbers missed) ahead of the message's own records. Call
  :meth:`CoinApiParser.reset` on every (re)connect: numbering restarts with the connection.
* ``heartbeat`` / ``hearbeat`` → HEARTBEAT; ``reconnect`` and ``error`` → CONTROL.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping, Sequence

import msgspec
import numpy as np

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_TRADE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.coinapi.symbols import to_symbol_id
from fairfeed.providers.coinapi.wire import SERVER_DECODER, Hearbeat, Heartbeat, Quote, Trade
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    RECORD_STRUCT,
    RecordParser,
)
from fairfeed.providers.timestamps import iso_to_ns

SIDES = {
    "BUY": SIDE_BUY,
    "SELL": SIDE_SELL,
    "BUY_ESTIMATED": SIDE_BUY,
    "SELL_ESTIMATED": SIDE_SELL,
}
_MAX_RECORDS = 3  # per message: a gap record + bid + ask
_crc32 = zlib.crc32


def uuid_key(uuid: str) -> int:
    """A trade uuid's 32-bit key: CRC-32 of its text (stable across processes, unlike
    ``hash``; any text, not only a well-formed uuid). 0 = no uuid."""
    return _crc32(uuid.encode()) if uuid else 0


class CoinApiParser(RecordParser):
    """Parses CoinAPI messages of one connection into a caller-owned record buffer.

    ``symbols`` maps a CoinAPI symbol id to ``(instrument id, venue id, class code)``.
    ``gaps`` / ``missed`` are running totals of the gaps found (the shared WebSocket base counts
    them); ``on_gap(missed)``, if given, is also called once per gap.
    """

    __slots__ = ("_last", "_seconds", "_symbols", "check_gaps", "on_gap")

    def __init__(
        self,
        symbols: Mapping[str, tuple[int, int, int]],
        provider: int,
        *,
        check_gaps: bool = True,
        on_gap: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(provider)  # venue and class come with each symbol
        # symbol id -> (instrument, venue, class, slot); slot indexes the sequence state
        self._symbols = {
            sid: (inst, venue, dc, 2 * i)
            for i, (sid, (inst, venue, dc)) in enumerate(symbols.items())
        }
        self._last = [-1] * (2 * len(self._symbols))  # last sequence per (symbol, trade|quote)
        self.check_gaps = check_gaps
        self.on_gap = on_gap
        self._seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> ns (a bounded cache)

    @classmethod
    def for_subscriptions(cls, subs: Sequence[Subscription], **options) -> CoinApiParser:
        """A parser for ``subs`` (each with its own venue, instrument and class)."""
        subs = tuple(subs)
        providers = {s.provider_id for s in subs}
        if len(providers) > 1:
            raise ValueError(f"one CoinAPI parser serves one provider, got ids {providers}")
        symbols = {
            to_symbol_id(s.venue, s.instrument, s.data_class): (
                s.instrument_id,
                s.venue_id,
                s.class_code,
            )
            for s in subs
        }
        return cls(symbols, providers.pop() if providers else 0, **options)

    @property
    def symbol_ids(self) -> list[str]:
        return list(self._symbols)

    def reset(self) -> None:
        """Forget the sequence numbers (a new connection numbers from scratch)."""
        self._last = [-1] * len(self._last)

    def _ns(self, s: str) -> int:
        """ISO-8601 text → ns, exact. CoinAPI's own shape (``…:SS.fffffffZ``, 28 characters)
        takes a fast path: the whole second comes from a cache, the 7 digits are an int."""
        if len(s) == 28:
            base = self._seconds.get(s[:19])
            if base is not None:
                frac = s[20:27]
                if s[19] == "." and s[27] == "Z" and frac.isdigit() and frac.isascii():
                    return base + int(frac) * 100
        ns = iso_to_ns(s)  # validates; ValueError or IndexError if malformed
        if len(s) == 28 and s[19] == ".":
            if len(self._seconds) >= 4096:
                self._seconds.clear()
            self._seconds[s[:19]] = ns - int(s[20:27]) * 100
        return ns

    def parse(self, data, out: np.ndarray, start: int, ts_receive: int) -> int:
        """Parse one message into ``out[start:]``; records written or a result code."""
        try:
            msg = SERVER_DECODER.decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self.error = str(exc)
            return PARSE_ERROR
        t = type(msg)
        if t is not Trade and t is not Quote:
            if t is Hearbeat or t is Heartbeat:
                return HEARTBEAT
            self.control = msg
            return CONTROL
        if start + _MAX_RECORDS > len(out):
            self.needed = _MAX_RECORDS
            return NEED_SPACE
        try:
            inst, venue, dc, slot = self._symbols[msg.symbol_id]
        except KeyError:
            self.error = f"unknown symbol_id {msg.symbol_id!r}"
            return PARSE_ERROR
        try:
            tx = self._ns(msg.time_exchange)
            tp = self._ns(msg.time_coinapi)
        except (ValueError, IndexError) as exc:
            self.error = f"{msg.symbol_id}: {exc}"
            return PARSE_ERROR
        if out is not self._out:
            self._out = out
            self._u8 = out.view(np.uint8)
        buf = self._u8
        pack = RECORD_STRUCT.pack_into
        prov = self.provider
        seq = msg.sequence
        off = start << 6
        try:
            if t is Quote:
                slot += 1
            if self.check_gaps and seq >= 0:
                last = self._last[slot]
                if seq > last:
                    self._last[slot] = seq
                    if last >= 0 and seq > last + 1:
                        missed = seq - last - 1
                        pack(buf, off, tx, tp, ts_receive, 0.0, float(missed), seq, inst, prov,
                             venue, KIND_GAP, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                        off += 64
                        self.gaps += 1
                        self.missed += missed
                        if self.on_gap is not None:
                            self.on_gap(missed)
            if t is Trade:
                u = msg.uuid  # inline uuid_key: one call less per trade
                pack(buf, off, tx, tp, ts_receive, msg.price, msg.size, seq, inst, prov, venue,
                     KIND_TRADE, dc, SIDES.get(msg.taker_side, SIDE_UNKNOWN), 0,
                     _crc32(u.encode()) if u else 0)  # fmt: skip
                off += 64
            else:
                pack(buf, off, tx, tp, ts_receive, msg.bid_price, msg.bid_size, seq, inst, prov,
                     venue, KIND_BID, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                pack(buf, off + 64, tx, tp, ts_receive, msg.ask_price, msg.ask_size, seq, inst,
                     prov, venue, KIND_ASK, dc, SIDE_UNKNOWN, 0, 0)  # fmt: skip
                off += 128
        except struct.error as exc:  # an integer outside int64
            self.error = f"{msg.symbol_id}: value out of range: {exc}"
            return PARSE_ERROR
        return (off >> 6) - start
