"""A local Binance market-stream server (combined streams, spot or USD-M futures), for tests and
the daemon.

Faithful to what the adapter depends on (docs/providers/binance.md):

* ``/stream?streams=a/b/c`` opens a combined stream with those streams; ``/stream`` alone
  opens an empty one; every market message is wrapped ``{"stream":…,"data":…}``. ``/ws``
  streams the same messages unwrapped (raw streams);
* ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` requests with ``{"result":…,"id":n}``
  answers and ``{"error":{"code":c,"msg":…},"id":n}`` errors (2 = invalid request, 3 = invalid
  JSON, -1003 = rate limited);
* at most ``max_streams`` streams per connection: a request that would exceed it gets error
  code 2, a URL that names more is closed with 1008;
* more than ``max_messages_per_second`` incoming requests in one second: the connection is
  closed (1008), as Binance does;
* a WebSocket ping every ``ping_interval``; a client that does not pong within
  ``ping_timeout`` is dropped (TCP abort);
* a connection is closed (1001) once it is ``max_connection_age`` old (Binance: 24 hours);
* ``market="usdm"`` (USD-M futures): instruments ``BASE-QUOTE-PERP`` / ``BASE-QUOTE-YYMMDD``
  (symbols ``BTCUSDT`` / ``BTCUSDT_250328``); streams are routed as on ``fstream`` since 2026:
  ``/public/...`` pushes ``bookTicker`` (with ``"e"``, ``"E"`` and ``"T"``), ``/market/...``
  pushes ``aggTrade``; a stream subscribed on the other route (or ``aggTrade`` on an unrouted
  connection) is accepted and never pushes anything, as there. Defaults there: 200 streams and
  10 messages per second per connection. ``/market/...`` also pushes ``<symbol>@markPrice@1s``
  (at most one per symbol every ``mark_interval`` seconds of market time, with the first event
  of the symbol after it: mark = that event's trade price or quote mid x (1 +
  ``mark_premium``), index = mark x (1 - 2 bp), funding rate 0.0001 with the next 8-hour
  boundary; a dated contract shows ``"r":""`` and ``"T":0``) and ``<symbol>@forceOrder``
  (every ``liquidation_every``-th trade of a symbol is also sent as a filled forced order of
  its size at its price, side = the taker's), shaped as Binance's documentation shows them.

Faults (:mod:`fairfeed.local.faults`): DISCONNECT, STALL (nothing sent, requests and
pings unread, so not even a WebSocket pong leaves), HEARTBEATS_ONLY (no data; pings go on:
Binance has no heartbeat messages), SEQUENCE_GAP (trade / aggregate ids skip),
EXCHANGE_DELAY, PRICE_OFFSET, MALFORMED, REJECT_SUBSCRIBE (error -1003). Binance has no
reconnect notice: RECONNECT_NOTICE does nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np
from websockets.exceptions import ConnectionClosed

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.market import EventBatch
from fairfeed.local.wsserver import Conn, LocalWsServer
from fairfeed.providers.binance.symbols import (
    USDM_ROUTES,
    split_stream,
    to_stream_symbol,
    to_symbol,
)
from fairfeed.providers.binance.wire import RATE_LIMIT_CODE, REQUEST_DECODER, encode

_FUNDING_MS = 8 * 3600 * 1000  # USD-M funding every 8 hours (00:00, 08:00, 16:00 UTC)


class BinanceServer(LocalWsServer):
    """Binance spot combined streams over the shared random-walk market."""

    heartbeat_interval = 0.0  # Binance sends WebSocket pings, no heartbeat messages
    keepalive = None  # our own ping loop (counted, stall-aware) replaces websockets' keepalive

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        market: str = "spot",
        max_streams: int = 0,
        ping_interval: float = 20.0,
        ping_timeout: float = 60.0,
        max_connection_age: float = 24 * 3600.0,
        max_messages_per_second: int = 0,
        mark_interval: float = 1.0,
        mark_premium: float = 0.0005,
        liquidation_every: int = 50,
        keep_log: bool = False,
        **base: Any,  # the shared server's (host, port, ...)
    ) -> None:
        super().__init__(name, cfg, **base)
        usdm = market == "usdm"
        self.binance_market = market  # self.market is the random walk
        self.max_streams = max_streams or (200 if usdm else 1024)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_connection_age = max_connection_age
        self.max_messages_per_second = max_messages_per_second or (10 if usdm else 5)
        self.mark_interval_ms = round(mark_interval * 1000)
        self.mark_premium = mark_premium
        self.liquidation_every = liquidation_every
        self.keep_log = keep_log
        self.sent: list[str] = []  # every market message sent (keep_log), in order
        self.requests: list[tuple[float, int, str, int]] = []  # (monotonic, conn, method, n)
        self.stream_symbols = [to_stream_symbol(s, market) for s in self.market.symbols]
        self.symbols_upper = [to_symbol(s, market) for s in self.market.symbols]
        self._by_stream_symbol = {s: i for i, s in enumerate(self.stream_symbols)}
        self.pings = 0
        self.pongs = 0
        self.pong_timeouts = 0  # clients dropped for not answering a ping
        self.age_closes = 0  # connections closed at max_connection_age
        self.rate_closes = 0  # connections closed for sending too many messages
        self.limit_errors = 0  # requests refused for exceeding max_streams

    # -- connection ----------------------------------------------------------------------------
    async def on_connect(self, conn: Conn) -> None:
        url = urlsplit(conn.path)
        path = url.path
        route = ""
        if self.binance_market == "usdm":
            first = path.lstrip("/").partition("/")[0]
            if first in ("public", "market"):
                route, path = first, path[len(first) + 1 :]
        conn.state.update(
            streams=set(), combined=not path.startswith("/ws"), window=(0.0, 0),
            pushed=self._pushed(route), keeper=asyncio.create_task(self._keep(conn)),
            next_mark={},
        )  # fmt: skip
        names = [s for v in parse_qs(url.query).get("streams", []) for s in v.split("/") if s]
        if not names:
            return
        try:
            for s in names:
                split_stream(s)
        except ValueError as exc:
            await conn.ws.close(1008, str(exc)[:100])
            return
        if len(set(names)) > self.max_streams:
            self.limit_errors += 1
            await conn.ws.close(1008, f"too many streams (max {self.max_streams})")
            return
        conn.state["streams"].update(names)
        self._update(conn)

    def _pushed(self, route: str) -> frozenset[str]:
        """The stream kinds a connection of ``route`` receives data of."""
        if self.binance_market != "usdm":
            return frozenset(("trade", "aggTrade", "bookTicker"))
        # an unrouted connection gets the public route's data only
        return frozenset(k for k, r in USDM_ROUTES.items() if r == (route or "public"))

    async def _keep(self, conn: Conn) -> None:
        """Ping every ``ping_interval``, drop a client whose pong is late, close at max age."""
        ws = conn.ws
        opened = last_ping = time.monotonic()
        waiter: asyncio.Future | None = None
        periods = [p for p in (self.ping_interval, self.ping_timeout, self.max_connection_age) if p]
        tick = min([1.0] + [p / 4 for p in periods])
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                await asyncio.wait([closed], timeout=tick)
                if closed.done():
                    return
                now = time.monotonic()
                if self.max_connection_age and now - opened >= self.max_connection_age:
                    self.age_closes += 1
                    await ws.close(1001, "connection older than 24 hours")
                    return
                if waiter is not None:
                    if waiter.done():
                        self.pongs += 1
                        waiter = None
                    elif now - last_ping > self.ping_timeout and not self.faults.stall:
                        self.pong_timeouts += 1
                        ws.transport.abort()
                        return
                if (
                    self.ping_interval
                    and waiter is None
                    and now - last_ping >= self.ping_interval
                    and not self.faults.stall
                ):
                    waiter = await ws.ping()
                    last_ping = now
                    self.pings += 1
        except ConnectionClosed:
            pass
        finally:
            closed.cancel()

    def _update(self, conn: Conn) -> None:
        idx = self._by_stream_symbol
        syms = {idx.get(s.partition("@")[0]) for s in conn.state["streams"]}
        conn.symbols = sorted(i for i in syms if i is not None)
        conn.wake.set()

    async def _error(self, conn: Conn, rid: object, code: int, msg: str) -> None:
        await conn.send(encode({"error": {"code": code, "msg": msg}, "id": rid}))

    async def on_message(self, conn: Conn, text: str) -> None:
        now = time.monotonic()
        start, count = conn.state["window"]
        if now - start >= 1.0:
            start, count = now, 0
        conn.state["window"] = (start, count + 1)
        if count + 1 > self.max_messages_per_second:
            self.rate_closes += 1
            await conn.ws.close(1008, "too many messages")
            return
        try:
            req = REQUEST_DECODER.decode(text)
        except msgspec.ValidationError as exc:
            await self._error(conn, None, 2, f"Invalid request: {exc}")
            return
        except msgspec.DecodeError as exc:
            await self._error(conn, None, 3, f"Invalid JSON: {exc}")
            return
        self.requests.append((now, conn.index, req.method, len(req.params)))
        streams: set[str] = conn.state["streams"]
        if req.method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if req.method == "SUBSCRIBE" and self.rejecting():
                await self._error(
                    conn, req.id, RATE_LIMIT_CODE,
                    "Too many requests; current limit is "
                    f"{self.max_messages_per_second} requests per second.",
                )  # fmt: skip
                return
            try:
                for s in req.params:
                    split_stream(s)
            except ValueError as exc:
                await self._error(conn, req.id, 2, f"Invalid request: {exc}")
                return
            if req.method == "SUBSCRIBE":
                if len(streams | set(req.params)) > self.max_streams:
                    self.limit_errors += 1
                    await self._error(
                        conn, req.id, 2,
                        f"Invalid request: too many streams (max {self.max_streams} per "
                        "connection)",
                    )  # fmt: skip
                    return
                streams.update(req.params)
            else:
                streams.difference_update(req.params)
            self._update(conn)
            await conn.send(encode({"result": None, "id": req.id}))
        elif req.method == "LIST_SUBSCRIPTIONS":
            await conn.send(encode({"result": sorted(streams), "id": req.id}))
        else:
            await self._error(conn, req.id, 2, f"Invalid request: unknown method {req.method!r}")

    # -- market messages -----------------------------------------------------------------------
    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        pushed: frozenset[str] = conn.state["pushed"]
        streams = {s for s in conn.state["streams"] if s.partition("@")[2] in pushed}
        combined = conn.state["combined"]
        usdm = self.binance_market == "usdm"
        names = self.stream_symbols
        upper = self.symbols_upper
        out = []
        is_quote = ev.is_quote.tolist()
        sym = ev.symbol.tolist()
        seq = ev.seq.tolist()
        tid = ev.trade_id.tolist()
        ts_e = (ev.ts_exchange // 1_000_000).tolist()
        ts_p = (ev.ts_provider // 1_000_000).tolist()
        price, size, buy = ev.price.tolist(), ev.size.tolist(), ev.taker_buy.tolist()
        bid, bsz, ask, asz = (
            ev.bid.tolist(),
            ev.bid_size.tolist(),
            ev.ask.tolist(),
            ev.ask_size.tolist(),
        )
        for i in range(len(sym)):
            s = names[sym[i]]
            if is_quote[i]:
                stream = f"{s}@bookTicker"
                if stream in streams:
                    data = (
                        f'{{"u":{seq[i]},"s":"{upper[sym[i]]}","b":"{bid[i]:.8f}",'
                        f'"B":"{bsz[i]:.8f}","a":"{ask[i]:.8f}","A":"{asz[i]:.8f}"}}'
                    )
                    if usdm:  # futures book tickers name their event and carry two times
                        data = (f'{{"e":"bookTicker",{data[1:-1]},"T":{ts_e[i]},'
                                f'"E":{ts_p[i]}}}')  # fmt: skip
                    out.append(f'{{"stream":"{stream}","data":{data}}}' if combined else data)
                continue
            m = "false" if buy[i] else "true"  # m: the buyer is the maker, i.e. the taker sold
            stream = f"{s}@trade"
            if stream in streams:
                data = (
                    f'{{"e":"trade","E":{ts_p[i]},"s":"{upper[sym[i]]}","t":{tid[i]},'
                    f'"p":"{price[i]:.8f}","q":"{size[i]:.8f}","T":{ts_e[i]},"m":{m},"M":true}}'
                )
                out.append(f'{{"stream":"{stream}","data":{data}}}' if combined else data)
            stream = f"{s}@forceOrder"
            if stream in streams and tid[i] % self.liquidation_every == 0:
                side = "BUY" if buy[i] else "SELL"
                data = (
                    f'{{"e":"forceOrder","E":{ts_p[i]},"o":{{"s":"{upper[sym[i]]}","S":"{side}",'
                    f'"o":"LIMIT","f":"IOC","q":"{size[i]:.8f}","p":"{price[i]:.8f}",'
                    f'"ap":"{price[i]:.8f}","X":"FILLED","l":"{size[i]:.8f}",'
                    f'"z":"{size[i]:.8f}","T":{ts_e[i]}}}}}'
                )
                out.append(f'{{"stream":"{stream}","data":{data}}}' if combined else data)
            stream = f"{s}@aggTrade"
            if stream in streams:  # one aggregate per trade, of three underlying trades
                t = tid[i]
                data = (
                    f'{{"e":"aggTrade","E":{ts_p[i]},"s":"{upper[sym[i]]}","a":{t},'
                    f'"p":"{price[i]:.8f}","q":"{size[i]:.8f}","f":{3 * t - 2},"l":{3 * t},'
                    f'"T":{ts_e[i]},"m":{m}' + ("}" if usdm else ',"M":true}')
                )
                out.append(f'{{"stream":"{stream}","data":{data}}}' if combined else data)
        if usdm:
            out += self._marks(conn, streams, ev, combined)
        if self.keep_log:
            self.sent.extend(out)
        return out

    def _marks(self, conn: Conn, streams: set[str], ev: EventBatch, combined: bool) -> list[str]:
        """markPrice@1s messages due with ``ev``: one per subscribed symbol whose last one is
        ``mark_interval`` of market time old, at the first of its events after that."""
        due: dict[int, int] = conn.state["next_mark"]
        out = []
        ts_p = (ev.ts_provider // 1_000_000).tolist()
        sym = ev.symbol.tolist()
        mid = np.where(ev.is_quote, (ev.bid + ev.ask) / 2, ev.price).tolist()
        for i in range(len(sym)):
            s = self.stream_symbols[sym[i]]
            stream = f"{s}@markPrice@1s"
            if stream not in streams or ts_p[i] < due.get(sym[i], 0):
                continue
            due[sym[i]] = ts_p[i] + self.mark_interval_ms
            upper = self.symbols_upper[sym[i]]
            mark = mid[i] * (1 + self.mark_premium)
            if "_" in upper:  # a dated contract: no funding
                rate, nxt = '""', 0
            else:
                rate, nxt = '"0.00010000"', (ts_p[i] // _FUNDING_MS + 1) * _FUNDING_MS
            data = (
                f'{{"e":"markPriceUpdate","E":{ts_p[i]},"s":"{upper}","p":"{mark:.8f}",'
                f'"i":"{mark * (1 - 0.0002):.8f}","P":"{mark:.8f}","r":{rate},"T":{nxt}}}'
            )
            out.append(f'{{"stream":"{stream}","data":{data}}}' if combined else data)
        return out

    def malformed_message(self) -> str:
        return '{"stream":"btcusdt@trade","data":{"e":"trade","p":"not-a-number"'
