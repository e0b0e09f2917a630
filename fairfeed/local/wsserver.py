"""Base of the local WebSocket provider servers (CoinAPI, Coinbase, Binance, Kraken...).

A subclass speaks one provider's protocol: it answers requests (:meth:`on_message`), formats
generated market events as that provider's messages (:meth:`format_events`), and knows its
heartbeat, malformed-message, reconnect-notice and rate-limit messages. This base runs the
server (``websockets``: speed does not matter here), paces events per connection, keeps the
statistics tests compare against, and applies the faults of :mod:`.faults` the same way for
every protocol.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault, FaultState
from fairfeed.local.market import EventBatch, Market
from fairfeed.local.thread import LoopThread

log = logging.getLogger(__name__)

TICK = 0.01  # pacing granularity, seconds
FAST_CHUNK = 2000  # events per step when rate = 0


@dataclass
class SymbolStats:
    trades: int = 0
    quotes: int = 0
    last_trade: tuple[float, float, bool, int] | None = None  # price, size, taker buy, seq
    last_quote: tuple[float, float, float, float, int] | None = None  # bid, bsz, ask, asz, seq

    @property
    def records(self) -> int:
        return self.trades + 2 * self.quotes


@dataclass
class ServerStats:
    connections_total: int = 0
    connections_open: int = 0
    requests: int = 0
    rejected: int = 0
    heartbeats: int = 0
    malformed: int = 0
    notices: int = 0
    events: int = 0
    symbols: dict[str, SymbolStats] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.symbols.values())


class Conn:
    """One client connection: what it subscribed, plus protocol-specific state."""

    def __init__(self, ws: ServerConnection, index: int) -> None:
        self.ws = ws
        self.index = index
        self.path = ws.request.path if ws.request is not None else "/"
        self.symbols: list[int] = []  # market indexes streamed on this connection
        self.changed = False  # the symbol set changed: the stream restarts its pacing
        self.state: dict[str, Any] = {}  # protocol-specific (ids, channels, auth...)
        self.wake = asyncio.Event()

    async def send(self, text: str | bytes) -> None:
        await self.ws.send(text if isinstance(text, str) else text.decode(errors="replace"))

    def subscribe(self, indexes: list[int]) -> None:
        for i in indexes:
            if i not in self.symbols:
                self.symbols.append(i)
        self.changed = True
        self.wake.set()

    def unsubscribe(self, indexes: list[int]) -> None:
        self.symbols = [i for i in self.symbols if i not in indexes]
        self.changed = True


class LocalWsServer(abc.ABC):
    """A provider protocol on 127.0.0.1, streaming a random-walk market to its subscribers."""

    heartbeat_interval = 1.0  # 0 = the protocol has no heartbeat messages

    def __init__(
        self, name: str, cfg: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.host = host
        self.port = port
        self.market = Market(cfg)
        self.faults = FaultState()
        self.stats = ServerStats()
        self._conns: dict[int, Conn] = {}
        self._n = 0
        self._server: Server | None = None

    # -- protocol hooks ------------------------------------------------------------------------
    @abc.abstractmethod
    async def on_message(self, conn: Conn, text: str) -> None:
        """A client message: subscribe (see :meth:`rejecting`), unsubscribe, ping..."""

    @abc.abstractmethod
    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        """The protocol messages carrying ``ev`` (in order)."""

    async def on_connect(self, conn: Conn) -> None:
        """Called once the WebSocket handshake is done (e.g. a welcome message)."""

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        return []

    def malformed_message(self) -> str:
        return '{"type": "trade", "price": "not-a-number"'

    def reconnect_notice(self, conn: Conn) -> str | None:
        """The protocol's "please reconnect" message, if it has one."""
        return None

    # -- helpers for subclasses ----------------------------------------------------------------
    def indexes(self, symbols: list[str]) -> tuple[list[int], list[str]]:
        """Market indexes of known ``symbols`` (canonical names), and the unknown ones."""
        known = [self.market.index[s] for s in symbols if s in self.market.index]
        unknown = [s for s in symbols if s not in self.market.index]
        return known, unknown

    def rejecting(self) -> bool:
        """Whether subscribe requests are to be refused now (the rate-limit fault); counts it."""
        self.stats.requests += 1
        if self.faults.reject_subscribe:
            self.stats.rejected += 1
            return True
        return False

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._handler, self.host, self.port, compression=None, max_size=1 << 22
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> LocalWsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def connections(self) -> int:
        return len(self._conns)

    # -- faults --------------------------------------------------------------------------------
    async def inject(self, fault: Fault, amount: float = 0.0) -> int:
        """Apply ``fault`` now; returns how many connections it touched (or 1 if global)."""
        f = self.faults
        conns = list(self._conns.values())
        if fault is Fault.DISCONNECT:
            for c in conns:
                c.ws.transport.abort()
            return len(conns)
        if fault is Fault.STALL:
            # Stop reading too: otherwise the WebSocket library keeps answering pings.
            f.stall = True
            for c in conns:
                c.ws.transport.pause_reading()
        elif fault is Fault.HEARTBEATS_ONLY:
            f.heartbeats_only = True
        elif fault is Fault.SEQUENCE_GAP:
            self.market.skip_sequence(int(amount or 5))
        elif fault is Fault.EXCHANGE_DELAY:
            f.exchange_delay_ms = amount
            self.market.exchange_delay_ns = int(amount * 1e6)
        elif fault is Fault.PRICE_OFFSET:
            f.price_offset_bps = amount
            self.market.extra_offset_bps = amount
        elif fault is Fault.REJECT_SUBSCRIBE:
            f.reject_subscribe = True
        elif fault is Fault.MALFORMED:
            for c in conns:
                for _ in range(int(amount or 1)):
                    with contextlib.suppress(ConnectionClosed):
                        await c.send(self.malformed_message())
                        self.stats.malformed += 1
            return len(conns)
        elif fault is Fault.RECONNECT_NOTICE:
            n = 0
            for c in conns:
                notice = self.reconnect_notice(c)
                if notice is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await c.send(notice)
                        self.stats.notices += 1
                        n += 1
            return n
        return 1

    def clear(self) -> None:
        """End every persistent fault."""
        if self.faults.stall:
            for c in self._conns.values():
                with contextlib.suppress(Exception):
                    c.ws.transport.resume_reading()
        self.faults.clear()
        self.market.skip_sequence(0)
        self.market.exchange_delay_ns = 0
        self.market.extra_offset_bps = 0.0

    # -- per connection ------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws, self._n)
        self._n += 1
        if self.faults.stall:  # a stalled server reads nothing, not even pings
            ws.transport.pause_reading()
        self._conns[conn.index] = conn
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        tasks = [asyncio.create_task(self._stream(conn)), asyncio.create_task(self._beat(conn))]
        try:
            await self.on_connect(conn)
            async for msg in ws:
                if self.faults.stall:
                    continue
                await self.on_message(conn, msg if isinstance(msg, str) else msg.decode())
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: connection %d failed", self.name, conn.index)
        finally:
            for t in tasks:
                t.cancel()
            del self._conns[conn.index]
            self.stats.connections_open -= 1

    async def _beat(self, conn: Conn) -> None:
        if self.heartbeat_interval <= 0:
            return
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                if self.faults.stall:
                    continue
                for msg in self.heartbeat_messages(conn):
                    await conn.send(msg)
                    self.stats.heartbeats += 1

    async def _stream(self, conn: Conn) -> None:
        cfg = self.cfg
        n_all = max(1, len(self.market.symbols))
        sent = 0
        with contextlib.suppress(ConnectionClosed):
            t0 = time.monotonic()
            paced = 0.0
            while True:
                limit = cfg.max_events - sent if cfg.max_events else FAST_CHUNK
                if not conn.symbols or limit <= 0:
                    conn.wake.clear()
                    await conn.wake.wait()
                    t0, paced = time.monotonic(), 0.0
                    continue
                if self.faults.stall or self.faults.heartbeats_only or conn.changed:
                    conn.changed = False
                    t0, paced = time.monotonic(), 0.0
                    if self.faults.stall or self.faults.heartbeats_only:
                        await asyncio.sleep(TICK)
                    continue
                if cfg.rate == 0:
                    n = min(FAST_CHUNK, limit)
                else:
                    rate = cfg.rate * len(conn.symbols) / n_all
                    due = (time.monotonic() - t0) * rate - paced
                    n = min(int(due), limit, FAST_CHUNK)
                    if n < 1:
                        await asyncio.sleep(TICK)
                        continue
                    paced += n
                ev = self.market.events(conn.symbols, n)
                for msg in self.format_events(conn, ev):
                    await conn.send(msg)
                self._account(ev)
                sent += n
                if cfg.rate == 0:
                    await asyncio.sleep(0)

    def _account(self, ev: EventBatch) -> None:
        st = self.stats
        st.events += len(ev)
        names = self.market.symbols
        for s in np.unique(ev.symbol):
            sym = st.symbols.setdefault(names[s], SymbolStats())
            mask = ev.symbol == s
            quotes = mask & ev.is_quote
            trades = mask & ~ev.is_quote
            sym.quotes += int(quotes.sum())
            sym.trades += int(trades.sum())
            if trades.any():
                i = int(np.flatnonzero(trades)[-1])
                sym.last_trade = (
                    float(ev.price[i]),
                    float(ev.size[i]),
                    bool(ev.taker_buy[i]),
                    int(ev.seq[i]),
                )
            if quotes.any():
                i = int(np.flatnonzero(quotes)[-1])
                sym.last_quote = (
                    float(ev.bid[i]), float(ev.bid_size[i]), float(ev.ask[i]),
                    float(ev.ask_size[i]), int(ev.seq[i]),
                )  # fmt: skip


class ServerThread(LoopThread):
    """Local servers on their own event loop in a background thread (tests, tools)."""

    def inject(self, fault: Fault, amount: float = 0.0, i: int = 0) -> int:
        return self.call(self.servers[i].inject, fault, amount)
