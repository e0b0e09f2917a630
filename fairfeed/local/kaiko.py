"""A local Kaiko Stream server: the generated ``kaikosdk`` servicers fed by the local market.

``StreamTradesServiceV1`` and ``StreamMarketUpdateServiceV1`` (top-of-book and trade
commodities) stream random-walk events from :class:`fairfeed.local.market.Market`
for the instruments an ``InstrumentCriteria`` selects: comma-separated lists and ``*`` in each of
exchange, class and code, as on Kaiko (the cartesian product of the lists). Every call must carry
``authorization: Bearer <api key>`` metadata (Kaiko's scheme), else UNAUTHENTICATED.

``StreamDerivativesInstrumentMetricsServiceV1`` serves the perpetuals and futures selected: every
``metrics_interval`` seconds, one update per instrument, one message per value as Kaiko sends
them (``value`` a decimal string): ``mark_price`` (the market's mid x (1 + ``MARK_PREMIUM``)),
``index_price`` (the mark 1 bp lower), ``price`` (the mid), ``open_interest`` (``OPEN_INTEREST``
contracts plus the update's number), ``24h_volume``, and for perpetuals ``funding_rate`` and
``predicted_funding_rate``, for futures ``time_to_expiry``; ``SDICK_PRICE`` commodities first,
then ``SDICK_RISK`` ones, only the kinds the request's ``commodities`` name (none = both).

The servicers subclass the ``kaikosdk`` base classes but are registered with a response
serializer that also passes raw ``bytes`` through, so the malformed-frame fault can put bytes on
the wire that are not a valid message (the generated ``add_..._to_server`` helpers cannot).

Faults (:meth:`KaikoServer.inject`), as Kaiko's protocol can express them:

* ``DISCONNECT`` — the server is stopped with no grace and restarted on the same port: every
  HTTP/2 connection is closed (clients see UNAVAILABLE), one-shot.
* ``RECONNECT_NOTICE`` — Kaiko has no reconnect message; the HTTP/2 equivalent is GOAWAY, sent by
  a graceful restart (0.5 s grace), one-shot.
* ``STALL`` — streams stay open and send nothing.
* ``HEARTBEATS_ONLY`` — Kaiko Stream has no application heartbeat, so this is the same as STALL
  for a client (HTTP/2 keepalive pings are still answered by the transport either way).
* ``SEQUENCE_GAP`` — the next event of each instrument skips ``amount`` numbers: trade ids (the
  exchange ``id``) jump. Kaiko's own ``sequence_id`` is not contiguous, so a client cannot tell
  a gap from it; only venues with numeric trade ids show the jump, in ``sequence``.
* ``EXCHANGE_DELAY`` — ``ts_exchange`` lags by ``amount`` ms.
* ``PRICE_OFFSET`` — prices move by ``amount`` basis points.
* ``MALFORMED`` — each open stream sends ``amount`` bad messages (one-shot), cycling through:
  bytes that are not protobuf, NaN price, missing instrument (empty class and code), negative
  amount, missing price (0), an unknown update type (market updates only). Metrics calls: bytes
  that are not protobuf, a value that is no number, an infinite value, a negative mark price, a
  message of another exchange.
* ``REJECT_SUBSCRIBE`` — new calls end at once with RESOURCE_EXHAUSTED (Kaiko's rate limit).
* ``OVERSIZED_FRAME`` — each open stream sends one message of ``amount`` bytes (one-shot): a
  client over its receive limit ends that call with RESOURCE_EXHAUSTED ("larger than max").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass

import grpc
from kaikosdk import sdk_pb2_grpc
from kaikosdk.stream.derivatives_instrument_metrics_v1 import commodity_kind_pb2
from kaikosdk.stream.derivatives_instrument_metrics_v1.request_pb2 import (
    StreamDerivativesInstrumentMetricsRequestV1,
)
from kaikosdk.stream.derivatives_instrument_metrics_v1.response_pb2 import (
    StreamDerivativesInstrumentMetricsResponseV1,
)
from kaikosdk.stream.market_update_v1 import commodity_pb2
from kaikosdk.stream.market_update_v1.request_pb2 import StreamMarketUpdateRequestV1
from kaikosdk.stream.market_update_v1.response_pb2 import StreamMarketUpdateResponseV1
from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1
from kaikosdk.stream.trades_v1.response_pb2 import StreamTradesResponseV1

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault, FaultState
from fairfeed.local.market import PROVIDER_LAG_NS, Market
from fairfeed.providers.kaiko.symbols import KaikoSymbols, exchange_code, guess_data_class

log = logging.getLogger(__name__)

TRADES_SERVICE = "kaikosdk.StreamTradesServiceV1"
MARKET_UPDATE_SERVICE = "kaikosdk.StreamMarketUpdateServiceV1"
METRICS_SERVICE = "kaikosdk.StreamDerivativesInstrumentMetricsServiceV1"
_FAST_CHUNK = 1024  # events generated per pass when rate = 0
_MAX_CHUNK = 8192
_TRADE = StreamTradesResponseV1
_UPDATE = StreamMarketUpdateResponseV1
_TOB = commodity_pb2.SMUC_TOP_OF_BOOK
_TRADES = commodity_pb2.SMUC_TRADE
_METRIC = StreamDerivativesInstrumentMetricsResponseV1
_PRICE_KIND = commodity_kind_pb2.SDICK_PRICE
_RISK_KIND = commodity_kind_pb2.SDICK_RISK
_METRIC_CLASSES = ("perpetual-future", "future")  # what the metrics service serves
MARK_PREMIUM = 0.0005  # mark = mid x (1 + this); index = mark x (1 - INDEX_DISCOUNT)
INDEX_DISCOUNT = 0.0001
OPEN_INTEREST = 1000  # contracts at update 0; update u has OPEN_INTEREST + u
FUNDING_RATE = "0.0001"  # Kaiko's values are decimal strings
PREDICTED_FUNDING_RATE = "-0.0000756735759807"
METRICS_LOG = 4096  # metrics messages kept per instrument in its stats


@dataclass
class InstrumentStats:
    """What the server sent for one instrument (``exchange:class:code``), over all streams."""

    trades: int = 0  # trade messages (trades service and trade market updates)
    quotes: int = 0  # top-of-book events (each is a BEST_BID and a BEST_ASK message)
    # (price, amount, side 1=buy 2=sell, trade id, ts_exchange ns, ts_collection ns)
    last_trade: tuple[float, float, int, int, int, int] | None = None
    # (bid, bid amount, ask, ask amount, ts_exchange ns, ts_collection ns)
    last_quote: tuple[float, float, float, float, int, int] | None = None
    metrics: int = 0  # metrics updates (each several messages)
    # (commodity, value, ts_collection ns) of the last METRICS_LOG metrics messages, in order
    metrics_log: deque[tuple[str, str, int]] = dataclasses.field(
        default_factory=lambda: deque(maxlen=METRICS_LOG)
    )


@dataclass(eq=False)
class _Stream:
    exchanges: frozenset[str] = frozenset()  # of the instruments it carries
    malformed: int = 0  # malformed messages still to send
    oversized: int = 0  # bytes of an oversized message still to send (0 = none)
    capped: bool = False  # has sent its cfg.max_events
    end: tuple[grpc.StatusCode, str] | None = None  # set by end_calls: finish with this status


def _serialize(msg) -> bytes:
    return msg if type(msg) is bytes else msg.SerializeToString()


def _match(pattern: str, value: str) -> bool:
    return any(p == "*" or p == value for p in pattern.split(",")) if pattern else False


@dataclass
class _Instrument:
    venue_index: int
    symbol: int  # index into that venue's Market
    exchange: str
    kclass: str
    code: str

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.kclass}:{self.code}"


class _Trades(sdk_pb2_grpc.StreamTradesServiceV1Servicer):
    def __init__(self, server: KaikoServer) -> None:
        self.s = server

    async def Subscribe(self, request, context):
        async for msg in self.s._stream(request, context, trades=True, quotes=False):
            yield msg


class _MarketUpdates(sdk_pb2_grpc.StreamMarketUpdateServiceV1Servicer):
    def __init__(self, server: KaikoServer) -> None:
        self.s = server

    async def Subscribe(self, request, context):
        commodities = set(request.commodities)
        async for msg in self.s._stream(
            request, context, trades=_TRADES in commodities, quotes=_TOB in commodities
        ):
            yield msg


class _Metrics(sdk_pb2_grpc.StreamDerivativesInstrumentMetricsServiceV1Servicer):
    def __init__(self, server: KaikoServer) -> None:
        self.s = server

    async def Subscribe(self, request, context):
        async for msg in self.s._stream(request, context, trades=False, quotes=False,
                                        metrics=set(request.commodities)):  # fmt: skip
            yield msg


class KaikoServer:
    """Kaiko Stream on ``host:port`` (0 = a free port) for the instruments of ``cfg.prices``
    (canonical names; ``-PERP`` names are perpetuals) at each venue of ``venues``.

    ``cfg.rate`` is events per second per venue over all instruments (each instrument gets
    ``rate / len(prices)``; a call receives its instruments' share, trades and quotes split by
    ``cfg.quote_ratio``); ``rate = 0`` is as fast as possible; ``cfg.max_events`` caps the
    events of one call. Each venue has its own random walk (seed + venue index). A metrics
    call sends one update per instrument every ``metrics_interval`` seconds, at most
    ``metrics_max`` of them (0 = no cap; a call that reached it counts in ``calls_capped``).
    """

    def __init__(
        self,
        cfg: SimulatorConfig,
        *,
        api_key: str = "test-key",
        venues: tuple[str, ...] = ("COINBASE",),
        symbols: KaikoSymbols | None = None,
        quiet: tuple[str, ...] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_interval: float = 1.0,
        metrics_max: int = 0,
    ) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self.host = host
        self._port = port
        self.symbols = symbols or KaikoSymbols()
        self.metrics_interval = metrics_interval
        self.metrics_max = metrics_max
        self.markets = [
            Market(dataclasses.replace(cfg, seed=cfg.seed + i)) for i in range(len(venues))
        ]
        self.instruments: list[_Instrument] = []
        for vi, venue in enumerate(venues):
            for si, name in enumerate(cfg.prices):
                ex, kc, code = self.symbols.criteria(venue, guess_data_class(name), name)
                self.instruments.append(_Instrument(vi, si, ex, kc, code))
        self.faults = FaultState()
        # venues of `quiet` never trade: their instruments can be subscribed, nothing is sent
        self.quiet = {exchange_code(v) for v in quiet}
        self.stats: dict[str, InstrumentStats] = {
            i.key: InstrumentStats() for i in self.instruments
        }
        self.subscribes = 0  # calls accepted
        self.subscribes_by: dict[str, int] = {}  # calls accepted per exchange code
        self.calls_ended = 0  # calls finished by end_calls
        self.rejected = 0  # calls refused (bad key, rate limit, nothing matched)
        self.malformed_sent = 0
        self.calls_capped = 0  # calls that have sent their cfg.max_events (tests wait on it)
        self.restarts = 0
        self._streams: set[_Stream] = set()
        self._server: grpc.aio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def target(self) -> str:
        return f"{self.host}:{self._port}"

    @property
    def streams(self) -> int:
        """Calls currently streaming."""
        return len(self._streams)

    def _make_server(self) -> grpc.aio.Server:
        # Clients may ping as often as they like, with or without data: grpc's defaults answer
        # pings more frequent than 5 min on a silent connection with GOAWAY too_many_pings,
        # which would turn a quiet market into a lost connection for a test's short keepalive.
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        trades, updates, metrics = _Trades(self), _MarketUpdates(self), _Metrics(self)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    TRADES_SERVICE,
                    {
                        "Subscribe": grpc.unary_stream_rpc_method_handler(
                            trades.Subscribe,
                            request_deserializer=StreamTradesRequestV1.FromString,
                            response_serializer=_serialize,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    MARKET_UPDATE_SERVICE,
                    {
                        "Subscribe": grpc.unary_stream_rpc_method_handler(
                            updates.Subscribe,
                            request_deserializer=StreamMarketUpdateRequestV1.FromString,
                            response_serializer=_serialize,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    METRICS_SERVICE,
                    {
                        "Subscribe": grpc.unary_stream_rpc_method_handler(
                            metrics.Subscribe,
                            request_deserializer=(
                                StreamDerivativesInstrumentMetricsRequestV1.FromString
                            ),
                            response_serializer=_serialize,
                        )
                    },
                ),
            )
        )
        port = server.add_insecure_port(f"{self.host}:{self._port}")
        if not port:
            raise OSError(f"cannot bind {self.host}:{self._port}")
        self._port = port
        return server

    async def start(self) -> None:
        self._server = self._make_server()
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        for t in list(self._tasks):
            t.cancel()
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def _restart(self, grace: float | None) -> None:
        old = self._server
        if old is None:
            return
        await old.stop(grace)
        self.restarts += 1
        self._server = self._make_server()
        await self._server.start()

    # --- faults ----------------------------------------------------------------------------

    def inject(self, fault: Fault, amount: float = 0) -> None:
        """Turn ``fault`` on (persistent faults) or perform it now (one-shot faults)."""
        f = self.faults
        if fault is Fault.DISCONNECT:
            self._spawn(self._restart(None))
        elif fault is Fault.RECONNECT_NOTICE:
            self._spawn(self._restart(0.5))
        elif fault is Fault.STALL:
            f.stall = True
        elif fault is Fault.HEARTBEATS_ONLY:
            f.heartbeats_only = True
        elif fault is Fault.SEQUENCE_GAP:
            for m in self.markets:
                m.skip_sequence(int(amount))
        elif fault is Fault.EXCHANGE_DELAY:
            f.exchange_delay_ms = float(amount)
            for m in self.markets:
                m.exchange_delay_ns = int(amount * 1e6)
        elif fault is Fault.PRICE_OFFSET:
            f.price_offset_bps = float(amount)
            for m in self.markets:
                m.extra_offset_bps = float(amount)
        elif fault is Fault.MALFORMED:
            for s in self._streams:
                s.malformed += int(amount) or 1
        elif fault is Fault.REJECT_SUBSCRIBE:
            f.reject_subscribe = True
        elif fault is Fault.OVERSIZED_FRAME:
            for s in self._streams:
                s.oversized = int(amount)
        else:  # pragma: no cover
            raise ValueError(f"unknown fault {fault!r}")

    def end_calls(
        self, venue: str, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = ""
    ) -> int:
        """Finish every open call carrying an instrument of ``venue`` (one-shot): with OK the
        server closes the stream, else it ends with ``code``. Returns how many were told."""
        exchange = exchange_code(venue)
        told = 0
        for s in self._streams:
            if exchange in s.exchanges and s.end is None:
                s.end = (code, details or f"ended by the server ({code.name})")
                told += 1
        return told

    def clear(self) -> None:
        """End every persistent fault."""
        self.faults.clear()
        for m in self.markets:
            m.exchange_delay_ns = 0
            m.extra_offset_bps = 0.0
            m.skip_sequence(0)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- streaming ---------------------------------------------------------------------------

    def select(self, criteria) -> list[_Instrument]:
        """The instruments an ``InstrumentCriteria`` selects (lists and ``*``, as on Kaiko)."""
        return [
            i
            for i in self.instruments
            if _match(criteria.exchange, i.exchange)
            and _match(criteria.instrument_class, i.kclass)
            and _match(criteria.code, i.code)
        ]

    async def _stream(self, request, context, *, trades: bool, quotes: bool, metrics=None):
        """One call: ``trades`` / ``quotes`` select the market services' events; ``metrics``
        (the requested commodity kinds, a set) makes it a metrics call."""
        md = dict(context.invocation_metadata() or ())
        if md.get("authorization") != f"Bearer {self.api_key}":
            self.rejected += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing API key")
        if self.faults.reject_subscribe:
            self.rejected += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")
        selected = self.select(request.instrument_criteria)
        if metrics is not None:  # Kaiko: "The instrument must be a derivative class."
            selected = [i for i in selected if i.kclass in _METRIC_CLASSES]
        if not selected or not (trades or quotes or metrics is not None):
            self.rejected += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no instrument matches")
        self.subscribes += 1
        for ex in {i.exchange for i in selected}:
            self.subscribes_by[ex] = self.subscribes_by.get(ex, 0) + 1
        await context.send_initial_metadata(())
        state = _Stream(exchanges=frozenset(i.exchange for i in selected))
        self._streams.add(state)
        if metrics is not None:
            gen = self._generate_metrics(state, selected, metrics or {_PRICE_KIND, _RISK_KIND})
        else:
            gen = self._generate(state, selected, trades, quotes)
        try:
            async for msg in gen:
                yield msg
        finally:
            self._streams.discard(state)
        if state.end is not None:
            self.calls_ended += 1
            if state.end[0] != grpc.StatusCode.OK:
                await context.abort(*state.end)

    async def _generate(self, state: _Stream, selected: list[_Instrument], trades, quotes):
        cfg = self.cfg
        selected = [i for i in selected if i.exchange not in self.quiet]
        while not selected and state.end is None:  # only quiet venues: the call stays silent
            await asyncio.sleep(0.02)
        per_venue: dict[int, list[_Instrument]] = {}
        for inst in selected:
            per_venue.setdefault(inst.venue_index, []).append(inst)
        rate = cfg.rate * len(selected) / len(cfg.prices) if cfg.rate > 0 else 0.0
        cap = cfg.max_events
        generated = 0
        t0 = time.monotonic()
        base = 0  # events due before t0
        kinds = 0
        while state.end is None:
            f = self.faults
            if state.malformed:
                n, state.malformed = state.malformed, 0
                for _ in range(n):
                    yield self._malformed(kinds, selected[0], trades and not quotes)
                    kinds += 1
                    self.malformed_sent += 1
            if state.oversized:
                size, state.oversized = state.oversized, 0
                yield b"\x00" * size  # the size is the point: a client refuses it unread
            if cap and generated >= cap and not state.capped:
                state.capped = True
                self.calls_capped += 1
            if f.stall or f.heartbeats_only or (cap and generated >= cap):
                await asyncio.sleep(0.02)
                t0, base = time.monotonic(), generated
                continue
            if rate:
                due = base + int((time.monotonic() - t0) * rate) - generated
                if due <= 0:
                    await asyncio.sleep(max(0.001, min(0.05, 1.0 / rate)))
                    continue
                n = min(due, _MAX_CHUNK)
            else:
                n = _FAST_CHUNK
            if cap:
                n = min(n, cap - generated)
            generated += n
            # split n over venues in proportion to their instruments
            left = n
            groups = list(per_venue.items())
            for gi, (vi, insts) in enumerate(groups):
                k = left if gi == len(groups) - 1 else n * len(insts) // len(selected)
                left -= k
                if k <= 0:
                    continue
                for msg in self._messages(vi, insts, k, trades, quotes):
                    yield msg
            if not rate:
                await asyncio.sleep(0)

    async def _generate_metrics(self, state: _Stream, selected: list[_Instrument], kinds: set):
        """A metrics call: one update of every instrument each ``metrics_interval``."""
        selected = [i for i in selected if i.exchange not in self.quiet]
        while not selected and state.end is None:  # only quiet venues: the call stays silent
            await asyncio.sleep(0.02)
        updates = 0
        bad = 0
        next_at = time.monotonic()
        while state.end is None:
            if state.malformed:
                n, state.malformed = state.malformed, 0
                for _ in range(n):
                    yield self._malformed_metric(bad, selected[0])
                    bad += 1
                    self.malformed_sent += 1
            if state.oversized:
                size, state.oversized = state.oversized, 0
                yield b"\x00" * size
            cap = self.metrics_max
            if cap and updates >= cap and not state.capped:
                state.capped = True
                self.calls_capped += 1
            now = time.monotonic()
            f = self.faults
            if f.stall or f.heartbeats_only or (cap and updates >= cap) or now < next_at:
                await asyncio.sleep(min(0.02, max(0.001, next_at - now)))
                continue
            next_at = max(next_at + self.metrics_interval, now)  # no burst after a stall
            updates += 1
            for inst in selected:
                for msg in self._metric_messages(inst, kinds):
                    yield msg

    def trade_messages(self, n: int, venue_index: int = 0) -> list[bytes]:
        """``n`` serialized ``StreamTradesResponseV1`` messages of venue ``venue_index``'s
        instruments, as a trades call streams them (counted in :attr:`stats` the same way):
        for servers that send pre-serialized messages (:mod:`fairfeed.local.kaikoflood`)."""
        insts = [i for i in self.instruments if i.venue_index == venue_index]
        out: list[bytes] = []
        while len(out) < n:  # quote events (cfg.quote_ratio) give no trade message
            msgs = self._messages(venue_index, insts, min(n - len(out), _MAX_CHUNK), True, False)
            out += [m.SerializeToString() for m in msgs]
        return out

    def _metric_messages(self, inst: _Instrument, kinds: set) -> list:
        """One update of ``inst``'s metrics: a message per value, of the kinds in ``kinds``."""
        st = self.stats[inst.key]
        u = st.metrics
        st.metrics += 1
        market = self.markets[inst.venue_index]
        mid = float(market.mid[inst.symbol]) * (1 + market.extra_offset_bps / 1e4)
        mark = mid * (1 + MARK_PREMIUM)
        values: list[tuple[int, str, str]] = []
        if _PRICE_KIND in kinds:
            values += [
                (_PRICE_KIND, "mark_price", repr(mark)),
                (_PRICE_KIND, "index_price", repr(mark * (1 - INDEX_DISCOUNT))),
                (_PRICE_KIND, "price", repr(mid)),
            ]
        if _RISK_KIND in kinds:
            values += [(_RISK_KIND, "open_interest", str(OPEN_INTEREST + u)),
                       (_RISK_KIND, "24h_volume", "5270648")]  # fmt: skip
            if inst.kclass == "perpetual-future":
                values += [
                    (_RISK_KIND, "funding_rate", FUNDING_RATE),
                    (_RISK_KIND, "predicted_funding_rate", PREDICTED_FUNDING_RATE),
                ]
            else:
                values.append((_RISK_KIND, "time_to_expiry", "41504"))
        now = time.time_ns()
        collected = now - PROVIDER_LAG_NS
        msgs = []
        for kind, name, value in values:
            m = _METRIC(value=value, legacy_symbol=inst.code.replace("-", "").upper(),
                        exchange=inst.exchange, commodity=name, commodity_kind=kind)  # fmt: skip
            _stamp_metric(m, collected, now)
            st.metrics_log.append((name, value, collected))
            msgs.append(m)
        return msgs

    def _malformed_metric(self, i: int, inst: _Instrument):
        v = i % 5
        if v == 0:
            return b"\xff\xff\xff\xff\x0f"  # not a protobuf message
        m = _METRIC(value="100.5", exchange=inst.exchange, commodity="mark_price",
                    commodity_kind=_PRICE_KIND)  # fmt: skip
        now = time.time_ns()
        _stamp_metric(m, now, now)
        if v == 1:
            m.value = "1O0.5"  # a letter O: no number
        elif v == 2:
            m.value = "inf"
        elif v == 3:
            m.value = "-100.5"
        else:
            m.exchange = "zzzz"
        return m

    def _messages(self, vi: int, insts: list[_Instrument], n: int, trades: bool, quotes: bool):
        """Messages for ``n`` events of venue ``vi``'s instruments ``insts``."""
        ev = self.markets[vi].events([i.symbol for i in insts], n)
        by_symbol = {i.symbol: i for i in insts}
        now = time.time_ns()
        msgs: list = []
        sym = ev.symbol.tolist()
        isq = ev.is_quote.tolist()
        price, size, buy = ev.price.tolist(), ev.size.tolist(), ev.taker_buy.tolist()
        bid, bsz, ask, asz = (
            ev.bid.tolist(),
            ev.bid_size.tolist(),
            ev.ask.tolist(),
            ev.ask_size.tolist(),
        )
        tid, tex, tpr = ev.trade_id.tolist(), ev.ts_exchange.tolist(), ev.ts_provider.tolist()
        for j in range(n):
            inst = by_symbol[sym[j]]
            st = self.stats[inst.key]
            if isq[j]:
                if not quotes:
                    continue
                for side, p, a in (
                    (_UPDATE.BEST_BID, bid[j], bsz[j]),
                    (_UPDATE.BEST_ASK, ask[j], asz[j]),
                ):
                    m = _UPDATE(
                        commodity=_TOB, amount=a, exchange=inst.exchange, code=inst.code,
                        price=p, update_type=side, sequence_id=f"{tpr[j]:x}{j}",
                    )  # fmt: skip
                    setattr(m, "class", inst.kclass)
                    _stamp(m, tex[j], tpr[j], now)
                    msgs.append(m)
                st.quotes += 1
                st.last_quote = (bid[j], bsz[j], ask[j], asz[j], tex[j], tpr[j])
            else:
                if not trades:
                    continue
                side = 1 if buy[j] else 2
                if quotes:  # a trade on the market-update service
                    m = _UPDATE(
                        commodity=_TRADES,
                        update_type=_UPDATE.TRADE_BUY if side == 1 else _UPDATE.TRADE_SELL,
                    )
                else:
                    m = _TRADE(side=side)
                m.amount = size[j]
                m.price = price[j]
                m.exchange = inst.exchange
                m.code = inst.code
                m.id = str(tid[j])
                m.sequence_id = f"{tpr[j]:x}{j}"
                setattr(m, "class", inst.kclass)
                _stamp(m, tex[j], tpr[j], now)
                msgs.append(m)
                st.trades += 1
                st.last_trade = (price[j], size[j], side, tid[j], tex[j], tpr[j])
        return msgs

    def _malformed(self, i: int, inst: _Instrument, trades_only: bool):
        variants = 5 if trades_only else 6
        v = i % variants
        if v == 0:
            return b"\xff\xff\xff\xff\x0f"  # not a protobuf message
        m = _TRADE(side=1) if trades_only else _UPDATE(update_type=_UPDATE.BEST_BID)
        m.price, m.amount, m.exchange, m.code = 100.0, 1.0, inst.exchange, inst.code
        setattr(m, "class", inst.kclass)
        now = time.time_ns()
        _stamp(m, now, now, now)
        if v == 1:
            m.price = float("nan")
        elif v == 2:
            m.code = ""
            m.ClearField("class")
        elif v == 3:
            m.amount = -1.0
        elif v == 4:
            m.ClearField("price")
        else:
            m.update_type = 42  # type: ignore[assignment]
        return m


def _stamp(m, ts_exchange: int, ts_collection: int, ts_event: int) -> None:
    m.ts_exchange.value.FromNanoseconds(ts_exchange)
    m.ts_collection.value.FromNanoseconds(ts_collection)
    m.ts_event.FromNanoseconds(ts_event)


def _stamp_metric(m, ts_collection: int, ts_event: int) -> None:
    # metrics carry plain Timestamps and no venue time (trades: nullable wrappers)
    m.ts_collection.FromNanoseconds(ts_collection)
    m.ts_event.FromNanoseconds(ts_event)
