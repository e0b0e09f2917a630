"""Kaiko Stream response messages (serialized protobuf) → RECORD_DTYPE records.

The adapter receives each gRPC message as raw bytes (no response deserializer on the call) and
hands them here: decoding with the generated ``kaikosdk`` types happens inside
:meth:`KaikoParser.parse_trade` / :meth:`KaikoParser.parse_update`, so a frame that does not
decode is a counted parse error instead of an exception that ends the gRPC call. Records are
written with one ``struct.pack_into`` into a byte view of the caller's preallocated buffer; the
only per-message Python objects are the ones protobuf creates.

Field by field (``kaikosdk`` 1.x):

* ``price`` and ``amount`` are doubles on the wire (early Kaiko SDKs sent decimal strings; this
  version does not). A non-finite or non-positive price, or a negative / non-finite amount, is a
  malformed frame.
* ``amount`` is the exchange's quantity; see :mod:`.symbols` for the per-instrument unit, turned
  into a base-currency size here.
* ``id`` (the exchange's trade id) is a string: when it is a decimal integer that fits in int64 it
  becomes ``sequence``, otherwise ``sequence`` = SEQ_NONE. ``sequence_id`` is Kaiko's own event id,
  sortable but not contiguous, so it cannot reveal gaps and is not used.
* ``ts_exchange`` (nullable: some venues give no time) → ``ts_exchange``; ``ts_collection`` (when
  Kaiko received the event from the venue, falling back to ``ts_event``) → ``ts_provider``; both
  exact to the nanosecond (``seconds * 10**9 + nanos``, integer arithmetic). ``ts_receive`` is ours.
* Trades: ``side`` BUY / SELL / UNKNOWN → taker side. Market updates: ``BEST_BID`` / ``BEST_ASK``
  (top-of-book commodity) → one BID / ASK record; ``TRADE_*`` → a trade; order-book updates and
  snapshots (full-book commodity, not requested) are skipped without error.
* Derivatives instrument metrics (:meth:`KaikoParser.metrics_parser`): one value per message,
  ``commodity`` naming it and ``value`` a decimal string. ``mark_price`` → MARK,
  ``index_price`` → INDEX, ``funding_rate`` / ``predicted_funding_rate`` → FUNDING (``price``
  the latest rate, ``size`` the latest predicted rate or NaN, ``reserved`` 0: Kaiko publishes no
  next funding time), ``open_interest`` (contracts) → OPEN_INTEREST in base units by the
  instrument's amount unit (a quote unit at the latest mark price). A response names its
  exchange but neither class nor code, so each instrument has its own call and its own parser
  state. Other commodities (``price``, ``24h_volume``, ``time_to_expiry``, greeks...) and
  empty or NaN values give no record; ``ts_exchange`` is 0 (the stream carries no venue time).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from kaikosdk.stream.derivatives_instrument_metrics_v1.response_pb2 import (
    StreamDerivativesInstrumentMetricsResponseV1,
)
from kaikosdk.stream.market_update_v1.response_pb2 import StreamMarketUpdateResponseV1
from kaikosdk.stream.trades_v1.response_pb2 import StreamTradesResponseV1

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.kaiko.symbols import UNIT_BASE, UNIT_CONTRACTS, UNIT_QUOTE, KaikoSymbols
from fairfeed.providers.parsing import PARSE_ERROR, RECORD_STRUCT, RecordParser

_RECORD = RECORD_STRUCT
_INT64_MAX = (1 << 63) - 1
_NS = 1_000_000_000
_isfinite = math.isfinite

_U = StreamMarketUpdateResponseV1
# update_type -> (record kind, side); None = skipped (order-book traffic)
_UPDATE_KINDS: dict[int, tuple[int, int] | None] = {
    _U.TRADE_BUY: (KIND_TRADE, SIDE_BUY),
    _U.TRADE_SELL: (KIND_TRADE, SIDE_SELL),
    _U.TRADE_UNKNOWN: (KIND_TRADE, SIDE_UNKNOWN),
    _U.BEST_BID: (KIND_BID, SIDE_UNKNOWN),
    _U.BEST_ASK: (KIND_ASK, SIDE_UNKNOWN),
    _U.UPDATED_BID: None,
    _U.UPDATED_ASK: None,
    _U.SNAPSHOT: None,
    _U.FORCE_SNAPSHOT: None,
}
_TRADE_SIDES = {
    StreamTradesResponseV1.BUY: SIDE_BUY,
    StreamTradesResponseV1.SELL: SIDE_SELL,
    StreamTradesResponseV1.UNKNOWN: SIDE_UNKNOWN,
}


_METRICS = StreamDerivativesInstrumentMetricsResponseV1
# Kaiko's metric commodities that become records; any other commodity is skipped
_MARK, _INDEX, _RATE, _PREDICTED, _OI = range(5)
METRIC_COMMODITIES: dict[str, int] = {
    "mark_price": _MARK,
    "index_price": _INDEX,
    "funding_rate": _RATE,
    "predicted_funding_rate": _PREDICTED,
    "open_interest": _OI,
}
# A decimal number as Kaiko writes values ("-0.0000756735759807", "59583.2", "1e-05"); no
# "inf", "0x10" or "1_000", which Python's float() would take
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAN = math.nan
METRIC_RECORDS = 2  # the most records one metrics message gives (a mark and a held OI)


class _Malformed(Exception):
    pass


def metric_value(text: str) -> float | None:
    """The number of a metrics ``value``; None when it is empty or NaN (nothing published);
    raises _Malformed when it is no finite decimal number."""
    if not text or text.lower() in ("nan", "+nan", "-nan"):
        return None
    if not _DECIMAL.fullmatch(text):
        raise _Malformed(f"value {text[:40]!r} is not a decimal number")
    v = float(text)
    if not _isfinite(v):
        raise _Malformed(f"value {text[:40]!r} out of range")
    return v


class MetricsState:
    """What the parser keeps of one instrument's metrics call, between its messages: Kaiko sends
    one value per message, so a funding record carries the latest rate and predicted rate, and
    an open interest counted in quote units waits for a mark price to be converted (only the
    latest waits: it is a level, a newer one supersedes it)."""

    __slots__ = ("exchange", "held", "inst", "mark", "predicted", "rate")

    def __init__(self, exchange: str, inst: tuple[int, int, int, int, float]) -> None:
        self.exchange = exchange
        self.inst = inst  # (instrument id, venue id, class code, amount unit, contract size)
        self.mark: float | None = None
        self.rate: float | None = None
        self.predicted = _NAN
        self.held: tuple[float, int] | None = None  # (open interest, ts_provider)


def trade_sequence(trade_id: str) -> int:
    """The exchange trade id as ``sequence`` when it is a decimal int64, else SEQ_NONE."""
    if trade_id and trade_id.isascii() and trade_id.isdigit():
        v = int(trade_id)
        if v <= _INT64_MAX:
            return v
    return SEQ_NONE


def _ts(wrapper) -> int:
    """ns of a google.protobuf.Timestamp (0 = unset); raises _Malformed when out of range."""
    v = wrapper.seconds * _NS + wrapper.nanos
    if v < 0 or v > _INT64_MAX or not 0 <= wrapper.nanos < _NS:
        raise _Malformed(f"timestamp out of range ({wrapper.seconds}, {wrapper.nanos})")
    return v


class KaikoParser(RecordParser):
    """Parses one Kaiko message at a time into a caller-owned record buffer.

    ``instruments`` maps ``(exchange, kaiko class, code)`` to ``(instrument id, venue id,
    class code, amount unit, contract size)``; anything else in a response is a parse error
    (the adapter subscribes exactly these instruments). gRPC has one message type per call, so
    instead of ``parse`` there are :meth:`parse_trade` and :meth:`parse_update` (same contract).
    """

    __slots__ = ("instruments",)

    def __init__(
        self,
        instruments: dict[tuple[str, str, str], tuple[int, int, int, int, float]],
        provider: int,
    ) -> None:
        super().__init__(provider)  # venue and class come with each instrument
        self.instruments = dict(instruments)

    @classmethod
    def for_subscriptions(
        cls, subs: Sequence[Subscription], *, symbols: KaikoSymbols | None = None
    ) -> KaikoParser:
        """The table of ``subs`` (any venue and class), named by ``symbols``' rules."""
        symbols = symbols or KaikoSymbols()
        table = {}
        for s in subs:
            unit, csize = symbols.amount_unit(s.venue, s.data_class, s.instrument)
            key = symbols.criteria(s.venue, s.data_class, s.instrument)
            table[key] = (s.instrument_id, s.venue_id, s.class_code, unit, csize)
        return cls(table, subs[0].provider_id if subs else 0)

    def parse_trade(self, data: bytes, out: np.ndarray, start: int, ts_receive: int) -> int:
        """A serialized ``StreamTradesResponseV1`` → 1 record at ``out[start]``, or PARSE_ERROR."""
        try:
            m = StreamTradesResponseV1.FromString(data)
            side = _TRADE_SIDES.get(m.side)
            if side is None:
                raise _Malformed(f"unknown trade side {m.side}")
            return self._write(m, KIND_TRADE, side, out, start, ts_receive)
        except _Malformed as exc:
            self.error = str(exc)
        except Exception as exc:  # DecodeError, struct.error, anything protobuf raises
            self.error = f"{type(exc).__name__}: {exc}"
        return PARSE_ERROR

    def parse_update(self, data: bytes, out: np.ndarray, start: int, ts_receive: int) -> int:
        """One serialized ``StreamMarketUpdateResponseV1`` → 0 or 1 record, or PARSE_ERROR."""
        try:
            m = StreamMarketUpdateResponseV1.FromString(data)
            what = _UPDATE_KINDS.get(m.update_type, False)
            if what is None:
                return 0
            if what is False:
                raise _Malformed(f"unknown update type {m.update_type}")
            return self._write(m, what[0], what[1], out, start, ts_receive)  # type: ignore[index]
        except _Malformed as exc:
            self.error = str(exc)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        return PARSE_ERROR

    def _write(self, m, kind: int, side: int, out, start: int, ts_receive: int) -> int:
        key = (m.exchange, getattr(m, "class"), m.code)
        inst = self.instruments.get(key)
        if inst is None:
            raise _Malformed(f"unsubscribed or unnamed instrument {':'.join(key)!r}")
        price = m.price
        amount = m.amount
        if not (_isfinite(price) and price > 0.0):
            raise _Malformed(f"bad price {price!r}")
        if not (_isfinite(amount) and amount >= 0.0):
            raise _Malformed(f"bad amount {amount!r}")
        inst_id, venue, dclass, unit, csize = inst
        if unit != UNIT_BASE:
            if unit == UNIT_QUOTE:  # quote currency, or contracts worth csize of it
                amount = amount * csize / price
            elif unit == UNIT_CONTRACTS:
                amount = amount * csize
        t_ex = _ts(m.ts_exchange.value) if m.HasField("ts_exchange") else 0
        if m.HasField("ts_collection"):
            t_pr = _ts(m.ts_collection.value)
        else:
            t_pr = _ts(m.ts_event) if m.HasField("ts_event") else 0
        if start >= len(out):
            raise _Malformed("record buffer full")  # the caller sizes its buffer; never expected
        _RECORD.pack_into(
            self._buffer(out), start << 6, t_ex, t_pr, ts_receive, price, amount,
            trade_sequence(m.id), inst_id, self.provider, venue, kind, dclass, side, 0, 0,
        )  # fmt: skip
        return 1

    # --- derivatives instrument metrics ------------------------------------------------------

    def metrics_parser(self, key: tuple[str, str, str]) -> Callable[..., int]:
        """The parse function of the metrics call of instrument ``key`` (``(exchange, kaiko
        class, code)``, in the table): ``parse(data, out, start, ts_receive)``, the contract of
        :meth:`parse_trade`, giving up to METRIC_RECORDS records, with a state of its own."""
        return partial(self.parse_metric, MetricsState(key[0], self.instruments[key]))

    def parse_metric(
        self, state: MetricsState, data: bytes, out: np.ndarray, start: int, ts_receive: int
    ) -> int:
        """One serialized ``StreamDerivativesInstrumentMetricsResponseV1`` of the instrument of
        ``state`` → 0 to METRIC_RECORDS records at ``out[start:]``, or PARSE_ERROR."""
        try:
            m = _METRICS.FromString(data)
            if m.exchange and m.exchange != state.exchange:
                raise _Malformed(f"metrics of exchange {m.exchange[:20]!r} on the call of "
                                 f"{state.exchange!r}")  # fmt: skip
            what = METRIC_COMMODITIES.get(m.commodity)
            if what is None:
                return 0  # a commodity we do not publish
            value = metric_value(m.value)
            if value is None:
                return 0
            if m.HasField("ts_collection"):
                t_pr = _ts(m.ts_collection)
            else:
                t_pr = _ts(m.ts_event) if m.HasField("ts_event") else 0
            if start + METRIC_RECORDS > len(out):
                raise _Malformed("record buffer full")  # the caller sizes its buffer
            return self._metric(state, what, m.commodity, value, t_pr, out, start, ts_receive)
        except _Malformed as exc:
            self.error = str(exc)
        except Exception as exc:  # DecodeError, struct.error, anything protobuf raises
            self.error = f"{type(exc).__name__}: {exc}"
        return PARSE_ERROR

    def _metric(self, state: MetricsState, what: int, name: str, value: float, t_pr: int,
                out: np.ndarray, start: int, rx: int) -> int:  # fmt: skip
        inst_id, venue, dclass, unit, csize = state.inst
        buf, off, prov = self._buffer(out), start << 6, self.provider
        if what in (_MARK, _INDEX):
            if not value > 0.0:
                raise _Malformed(f"bad {name} {value!r}")
            kind = KIND_MARK if what == _MARK else KIND_INDEX
            _RECORD.pack_into(buf, off, 0, t_pr, rx, value, 0.0, SEQ_NONE, inst_id, prov, venue,
                              kind, dclass, 0, 0, 0)  # fmt: skip
            if what == _INDEX:
                return 1
            state.mark = value
            held, state.held = state.held, None
            if held is None:
                return 1
            oi, t_oi = held  # an open interest in quote units: converted at this mark
            size = oi * csize / value
            _RECORD.pack_into(buf, off + 64, 0, t_oi, rx, 0.0, size, SEQ_NONE, inst_id, prov,
                              venue, KIND_OPEN_INTEREST, dclass, 0, 0, 0)  # fmt: skip
            return 2
        if what == _OI:
            if value < 0.0:
                raise _Malformed(f"bad open_interest {value!r}")
            if unit == UNIT_QUOTE:
                if state.mark is None:
                    state.held = (value, t_pr)  # published with the first mark price
                    return 0
                size = value * csize / state.mark
            else:
                size = value * csize if unit == UNIT_CONTRACTS else value
            _RECORD.pack_into(buf, off, 0, t_pr, rx, 0.0, size, SEQ_NONE, inst_id, prov, venue,
                              KIND_OPEN_INTEREST, dclass, 0, 0, 0)  # fmt: skip
            return 1
        if what == _RATE:
            state.rate = value
        else:
            state.predicted = value
        if state.rate is None:
            return 0  # a predicted rate before any rate: it comes with the first rate
        _RECORD.pack_into(buf, off, 0, t_pr, rx, state.rate, state.predicted, SEQ_NONE, inst_id,
                          prov, venue, KIND_FUNDING, dclass, 0, 0, 0)  # fmt: skip
        return 1
