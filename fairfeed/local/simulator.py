"""A simulated market-data provider: a WebSocket server streaming random-walk trades and quotes.

Protocol: docs/simulator-protocol.md. Speed matters only for ``rate = 0`` (as fast as possible):
events are generated in vectorized chunks, formatted straight to JSON text and written to the
transport as pre-built WebSocket frames, one ``write`` per chunk (the library's ``send`` costs
several µs per frame). Everything else (handshake, requests, close) goes through ``websockets``.

Semantics worth knowing (also in the protocol document):

* The random walk and the sequence of an instrument are server-wide: a client that reconnects
  continues where the previous connection stopped (events generated for a connection that broke
  before they were written are lost, like on a real feed, and show up as a ``seq`` gap).
* ``rate`` is events per second over *all* instruments in ``cfg.prices``: each instrument gets
  ``rate / len(prices)`` events/s, so a connection subscribed to k instruments receives
  ``rate * k / len(prices)`` — the total is ``rate`` however subscriptions are partitioned.
* ``max_events`` counts per connection; after it the connection receives heartbeats only.
* :attr:`SimulatorServer.stats` counts what was actually written to sockets, server-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.protocol import State

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.thread import LoopThread
from fairfeed.providers.simulator.wire import (
    CLIENT_REQUEST_DECODER,
    Error,
    Subscribe,
    Subscribed,
    Unsubscribed,
    encode,
    ws_text_frame,
)

log = logging.getLogger(__name__)

_FAST_CHUNK = 4096  # events generated per write when rate = 0
_MAX_CHUNK = 65536  # cap on events per write when catching up with a rate
_HALF_SPREAD = 0.5e-4  # half the bid/ask spread, relative to the mid
_EXCHANGE_LAG_NS = 2_000_000  # T = generation time - 2 ms
_PROVIDER_LAG_NS = 1_000_000  # P = generation time - 1 ms


@dataclass
class SymbolStats:
    """What one server wrote for one instrument, over all connections."""

    trades: int = 0
    quotes: int = 0
    # (price, size, side, seq, T, P) of the last trade written
    last_trade: tuple[float, float, str, int, int, int] | None = None
    # (bid, bid size, ask, ask size, seq, T, P) of the last quote written
    last_quote: tuple[float, float, float, float, int, int, int] | None = None

    @property
    def events(self) -> int:
        return self.trades + self.quotes

    @property
    def records(self) -> int:
        """Records these events normalize to: a trade is one, a quote two (bid + ask)."""
        return self.trades + 2 * self.quotes


@dataclass
class ServerStats:
    symbols: dict[str, SymbolStats] = field(default_factory=dict)
    events: int = 0
    frames: int = 0  # batch frames
    heartbeats: int = 0
    injected: int = 0
    connections_open: int = 0
    connections_total: int = 0
    subscribe_requests: int = 0
    request_errors: int = 0  # error answers sent
    # With keep_log: every event written, in order, as
    # ("trade", sym, price, size, side, seq, T, P) or ("quote", sym, bp, bq, ap, aq, seq, T, P).
    log: list[tuple] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.symbols.values())

    def symbol(self, name: str) -> SymbolStats:
        return self.symbols.get(name) or SymbolStats()


class _Market:
    """Server-wide state of one instrument: mid price walk and sequence."""

    def __init__(self, name: str, start: float, seed: int, index: int) -> None:
        self.name = name
        self.json_name = orjson.dumps(name).decode()
        self.mid = start
        self.seq = 0
        self.rng = np.random.default_rng([seed, index])
        mag = math.floor(math.log10(start)) if start > 0 else 0
        self.decimals = max(2, 6 - mag)
        self.tick = 10.0**-self.decimals
        self.size_scale = 1000.0 / start if start > 0 else 1.0  # ~1000 (quote currency) a trade


class _Conn:
    def __init__(self, ws: ServerConnection, index: int, seed: int) -> None:
        self.ws = ws
        self.index = index
        self.symbols: list[str] = []
        self.sent = 0  # events written on this connection
        self.rng = np.random.default_rng([seed, 1_000_003, index])
        self.wake = asyncio.Event()

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN and not self.ws.transport.is_closing()

    def write(self, data: bytes) -> bool:
        if not self.open:
            return False
        self.ws.transport.write(data)
        return True


class SimulatorServer:
    """One simulated provider. ``port=0`` binds a free port; :attr:`port` holds it after start."""

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_log: bool = False,
    ) -> None:
        if cfg.batch < 1 or cfg.rate < 0 or not 0 <= cfg.quote_ratio <= 1:
            raise ValueError("simulator needs batch >= 1, rate >= 0, 0 <= quote_ratio <= 1")
        self.name = name
        self.cfg = cfg
        self.host = host
        self.port = port
        self.keep_log = keep_log
        self._stats = ServerStats()
        self._markets = {
            sym: _Market(sym, float(px) * (1 + cfg.price_offset_bps / 1e4), cfg.seed, i)
            for i, (sym, px) in enumerate(cfg.prices.items())
        }
        self._conns: set[_Conn] = set()
        self._n_conns = 0
        self._server: Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            compression=None,  # raw frame writes rely on no extension being negotiated
            ping_interval=None,  # the protocol has its own heartbeats
            max_size=1 << 20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("simulator %s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- test hooks ------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """A snapshot (deep copy) of the counters; call from the server's loop thread."""
        return copy.deepcopy(self._stats)

    def inject(self, raw: bytes | str) -> int:
        """Write ``raw`` as a text frame, verbatim (even invalid UTF-8), to every connection."""
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        frame = ws_text_frame(data)
        n = sum(c.write(frame) for c in list(self._conns))
        self._stats.injected += n
        return n

    def drop_connections(self) -> int:
        """Abort every connection's TCP transport, as a network failure would."""
        conns = list(self._conns)
        for c in conns:
            c.ws.transport.abort()
        return len(conns)

    def connections(self) -> int:
        return len(self._conns)

    # --- per connection --------------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handler(self, ws: ServerConnection) -> None:
        conn = _Conn(ws, self._n_conns, self.cfg.seed)
        self._n_conns += 1
        self._conns.add(conn)
        self._stats.connections_open += 1
        self._stats.connections_total += 1
        streamer = self._spawn(self._stream(conn))
        beater = self._spawn(self._heartbeat(conn))
        try:
            async for msg in ws:
                self._request(conn, msg)
        except Exception as exc:  # connection errors end the connection, nothing else
            log.debug("simulator %s connection %d: %r", self.name, conn.index, exc)
        finally:
            streamer.cancel()
            beater.cancel()
            self._conns.discard(conn)
            self._stats.connections_open -= 1

    def _answer(self, conn: _Conn, msg: msgspec.Struct) -> None:
        if isinstance(msg, Error):
            self._stats.request_errors += 1
        conn.write(ws_text_frame(encode(msg)))

    def _request(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            req = CLIENT_REQUEST_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            self._answer(conn, Error(id=_request_id(raw), message=f"bad request: {exc}"))
            return
        unknown = [s for s in req.symbols if s not in self._markets]
        if unknown:
            self._answer(conn, Error(id=req.id, message=f"unknown symbol {' '.join(unknown)}"))
            return
        if isinstance(req, Subscribe):
            self._stats.subscribe_requests += 1
            for s in req.symbols:
                if s not in conn.symbols:
                    conn.symbols.append(s)
            # The answer is written before any data of these symbols can be (no await between).
            self._answer(conn, Subscribed(id=req.id, symbols=list(req.symbols)))
            conn.wake.set()
        else:
            conn.symbols = [s for s in conn.symbols if s not in req.symbols]
            self._answer(conn, Unsubscribed(id=req.id, symbols=list(req.symbols)))

    async def _heartbeat(self, conn: _Conn) -> None:
        interval = self.cfg.heartbeat_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            if conn.write(ws_text_frame(b'{"type":"heartbeat","ts":%d}' % time.time_ns())):
                self._stats.heartbeats += 1

    async def _stream(self, conn: _Conn) -> None:
        cfg = self.cfg
        batch = cfg.batch
        per_symbol_rate = cfg.rate / max(1, len(self._markets))
        pace_key = None
        t0 = 0.0
        paced = 0
        while True:
            remaining = cfg.max_events - conn.sent if cfg.max_events else _MAX_CHUNK
            if not conn.symbols or remaining <= 0:
                conn.wake.clear()
                await conn.wake.wait()
                continue
            if cfg.rate == 0:
                n = max(batch, _FAST_CHUNK - _FAST_CHUNK % batch)
            else:
                conn_rate = per_symbol_rate * len(conn.symbols)
                now = time.monotonic()
                if pace_key != len(conn.symbols):
                    pace_key, t0, paced = len(conn.symbols), now, 0
                due = int((now - t0) * conn_rate) - paced
                if due > max(conn_rate, _MAX_CHUNK):  # far behind (a stall): drop the backlog
                    t0, paced, due = now - batch / conn_rate, 0, batch
                if due < batch and due < remaining:
                    await asyncio.sleep(max(0.0, (paced + batch) / conn_rate - (now - t0)))
                    continue
                n = min(due - due % batch, _MAX_CHUNK) or due
                paced += n
            n = min(n, remaining)
            data, frames, updates = self._chunk(conn, n)
            if not conn.write(data):
                return
            conn.sent += n
            self._account(n, frames, updates)
            await conn.ws.drain()
            if cfg.rate == 0:
                await asyncio.sleep(0)

    # --- generation --------------------------------------------------------------------------

    def _chunk(self, conn: _Conn, n: int) -> tuple[bytes, int, list]:
        """``n`` events over the connection's symbols as raw frames of ``batch`` events."""
        cfg = self.cfg
        syms = conn.symbols
        rng = conn.rng
        which = rng.integers(len(syms), size=n) if len(syms) > 1 else np.zeros(n, np.int64)
        is_quote = rng.random(n) < cfg.quote_ratio
        texts: list[str] = [""] * n
        logged: list[tuple] | None = [()] * n if self.keep_log else None
        now = time.time_ns()
        t_ex = now - _EXCHANGE_LAG_NS
        t_pr = now - _PROVIDER_LAG_NS
        vol = cfg.volatility_bps / 1e4
        updates = []
        for j, sym in enumerate(syms):
            pos = np.flatnonzero(which == j)
            m = len(pos)
            if m == 0:
                continue
            mk = self._markets[sym]
            mids = mk.mid * np.cumprod(1.0 + mk.rng.normal(0.0, vol, m))
            mk.mid = float(mids[-1])
            dec = mk.decimals
            bids = np.round(mids * (1 - _HALF_SPREAD), dec)
            asks = np.maximum(np.round(mids * (1 + _HALF_SPREAD), dec), bids + mk.tick)
            asks = np.round(asks, dec)
            sizes = np.round(mk.rng.exponential(mk.size_scale, (3, m)) + 1e-6, 6).tolist()
            buys = (mk.rng.random(m) < 0.5).tolist()
            quote_mask = is_quote[pos]
            seq0 = mk.seq
            mk.seq += m
            name = mk.json_name
            last_trade = last_quote = None
            trades = 0
            for k, (p, q, b, a, bq, aq, buy, isq) in enumerate(
                zip(
                    pos.tolist(),
                    sizes[0],
                    bids.tolist(),
                    asks.tolist(),
                    sizes[1],
                    sizes[2],
                    buys,
                    quote_mask.tolist(),
                    strict=True,
                )
            ):
                seq = seq0 + k + 1
                if isq:
                    texts[p] = (
                        f'{{"e":"quote","s":{name},"bp":{b!r},"bq":{bq!r},"ap":{a!r},'
                        f'"aq":{aq!r},"seq":{seq},"T":{t_ex + p},"P":{t_pr + p}}}'
                    )
                    last_quote = (b, bq, a, aq, seq, t_ex + p, t_pr + p)
                    if logged is not None:
                        logged[p] = ("quote", sym, *last_quote)
                else:
                    px, side = (a, "buy") if buy else (b, "sell")
                    texts[p] = (
                        f'{{"e":"trade","s":{name},"p":{px!r},"q":{q!r},"side":"{side}",'
                        f'"seq":{seq},"T":{t_ex + p},"P":{t_pr + p}}}'
                    )
                    trades += 1
                    last_trade = (px, q, side, seq, t_ex + p, t_pr + p)
                    if logged is not None:
                        logged[p] = ("trade", sym, *last_trade)
            updates.append((sym, trades, m - trades, last_trade, last_quote))
        if logged is not None:
            updates.append(("", 0, 0, None, logged))
        b = cfg.batch
        frames = [
            ws_text_frame(
                ('{"type":"batch","events":[' + ",".join(texts[i : i + b]) + "]}").encode()
            )
            for i in range(0, n, b)
        ]
        return b"".join(frames), len(frames), updates

    def _account(self, n: int, frames: int, updates: list) -> None:
        st = self._stats
        st.events += n
        st.frames += frames
        for sym, trades, quotes, last_trade, last_quote in updates:
            if not sym:
                st.log.extend(last_quote)
                continue
            s = st.symbols.get(sym)
            if s is None:
                s = st.symbols[sym] = SymbolStats()
            s.trades += trades
            s.quotes += quotes
            if last_trade is not None:
                s.last_trade = last_trade
            if last_quote is not None:
                s.last_quote = last_quote

    # --- running outside the caller's loop ---------------------------------------------------

    def run_in_thread(self) -> SimulatorThread:
        """A started background thread running this server (a context manager)."""
        return SimulatorThread(self).start()


def _request_id(raw: str | bytes) -> int | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


class SimulatorThread(LoopThread):
    """Simulator servers on their own event loop in a daemon thread; thread-safe proxies."""

    @property
    def server(self) -> SimulatorServer:
        return self.servers[0]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def stats(self, i: int = 0) -> ServerStats:
        return self.call(lambda: self.servers[i].stats)

    def inject(self, raw: bytes | str, i: int = 0) -> int:
        return self.call(self.servers[i].inject, raw)

    def drop_connections(self, i: int = 0) -> int:
        return self.call(self.servers[i].drop_connections)

    def connections(self, i: int = 0) -> int:
        return self.call(self.servers[i].connections)


async def serve_forever(
    servers: Iterable[SimulatorServer],
    ready: Callable[[list[SimulatorServer]], None] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
) -> None:
    """Start ``servers``, call ``ready(servers)`` (their ports are bound), run until ``stop``
    is set or the task is cancelled (or SIGTERM/SIGINT with ``handle_signals``), then stop them.

    A forked child process runs ``asyncio.run(serve_forever(servers, report_ports, None, True))``.
    """
    servers = list(servers)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        for s in servers:
            await s.start()
        if ready is not None:
            ready(servers)
        await stop.wait()
    finally:
        for s in servers:
            await s.stop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
