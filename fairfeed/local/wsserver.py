"""Base of the local WebSocket provider servers (CoinAPI, Coinbase, Binance, Kraken...).

A subclass speaks one provider's protocol: it answers requests (:meth:`on_message`), formats
generated market events as that provider's messages (:meth:`format_events`), and knows its
heartbeat, malformed-message, reconnect-notice and rate-limit messages. This base runs the
server (``websockets``), paces events per connection, keeps the statistics tests compare
against, and applies the faults of :mod:`.faults` the same way for every protocol.

Two ways to write a chunk of events. By default each message goes through ``ws.send`` (several
µs a message; it lets a subclass wrap :meth:`Conn.send`, as Coinbase does to number messages).
A subclass that sets ``write_frames`` has its messages written as pre-built WebSocket frames,
one transport write per chunk: what the simulator needs at ``rate = 0``, where the server is
the bottleneck of the benchmarks. Pre-built frames rely on no extension being negotiated
(``compression=None``).

A ``gate`` (an :class:`asyncio.Event`) turns a server into a fixed workload for benchmarks: each
connection's whole ``max_events`` is generated and encoded once it subscribes
(``stats.prepared`` counts the connections ready), held until the gate is set, then written as
fast as the client drains, whatever ``rate`` says (``stats.finished`` counts the connections
that got all of it). Timestamps are then generation time, before the gate opened.

By default each connection is paced on its own and gets events of its own (the numbering is
server-wide, so ids never repeat across connections). With ``tape=True`` the server is one
market, as a venue is: events are generated at ``cfg.rate`` over every instrument from start,
whether anyone listens or not, and each connection gets those of its instruments from the
moment it subscribed. Two connections of one client then see the same trades, and a client
that reconnects misses the ids generated while it was away. (``max_events`` and ``gate`` are
per-connection workloads and do not apply to a tape.)
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault, FaultState
from fairfeed.local.market import EventBatch, Market
from fairfeed.local.thread import LoopThread
from fairfeed.providers.simulator.wire import OP_BINARY, ws_frame, ws_text_frame

log = logging.getLogger(__name__)

TICK = 0.01  # pacing granularity, seconds
FAST_CHUNK = 2000  # events per step when rate = 0 (and at most per step when catching up)


@dataclass
class SymbolStats:
    """What one server wrote for one instrument, over all connections."""

    trades: int = 0
    quotes: int = 0
    # (price, size, taker side "buy" | "sell", seq, exchange ns, provider ns) of the last trade
    last_trade: tuple[float, float, str, int, int, int] | None = None
    # (bid, bid size, ask, ask size, seq, exchange ns, provider ns) of the last quote
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
    """What a server did, server-wide; market figures count what was written to sockets."""

    connections_total: int = 0
    connections_open: int = 0
    requests: int = 0  # subscribe requests (counted by :meth:`LocalWsServer.rejecting`)
    # time.monotonic() of every connection accepted and every subscribe request, in order
    # (what a per-IP rate limit counts)
    connect_times: list[float] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    rejected: int = 0  # of which refused by the REJECT_SUBSCRIBE fault
    request_errors: int = 0  # error answers, for protocols that count them
    heartbeats: int = 0
    malformed: int = 0
    notices: int = 0
    injected: int = 0  # frames written by :meth:`LocalWsServer.inject_frame`
    events: int = 0
    frames: int = 0  # data messages (frames) carrying the events
    prepared: int = 0  # with a gate: connections whose workload is generated
    finished: int = 0  # connections that were sent all their ``max_events``
    symbols: dict[str, SymbolStats] = field(default_factory=dict)
    # With ``log_events``: every event written, in order, as
    # ("trade", sym, price, size, side, seq, T, P) or ("quote", sym, bp, bq, ap, aq, seq, T, P).
    log: list[tuple] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.symbols.values())

    @property
    def subscribe_requests(self) -> int:
        return self.requests

    def symbol(self, name: str) -> SymbolStats:
        return self.symbols.get(name) or SymbolStats()


class _Chunk(NamedTuple):
    """Events encoded for one connection, ready to write."""

    ev: EventBatch
    data: bytes | list[str]  # pre-built frames (``write_frames``), else messages to send
    frames: int


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
        self.tape: asyncio.Queue[EventBatch] = asyncio.Queue()  # the server's tape (tape=True)

    async def send(self, text: str | bytes) -> None:
        await self.ws.send(text if isinstance(text, str) else text.decode(errors="replace"))

    def write(self, frames: bytes) -> bool:
        """Write pre-built WebSocket frames straight to the transport, if the connection is
        open; the caller awaits :meth:`drain` before writing more."""
        if self.ws.state is not State.OPEN or self.ws.transport.is_closing():
            return False
        self.ws.transport.write(frames)
        return True

    async def drain(self) -> None:
        await self.ws.drain()

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
    keepalive: float | None = 20.0  # websockets' own ping interval; None: the protocol pings
    write_frames = False  # write a chunk as pre-built frames, one transport write (see above)
    pace_unit = 1  # events are paced (and cut into chunks) in multiples of this many
    tick = TICK  # least wait between paced chunks; 0 = each unit as soon as it is due
    fast_chunk = FAST_CHUNK

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_events: bool = False,
        gate: asyncio.Event | None = None,
        tape: bool = False,
    ) -> None:
        if gate is not None and cfg.max_events <= 0:
            raise ValueError("a gated server needs max_events > 0 (its fixed workload)")
        if tape and (gate is not None or cfg.rate <= 0):
            raise ValueError("a tape needs rate > 0 and no gate (one paced market for all)")
        self.name = name
        self.cfg = cfg
        self.host = host
        self.port = port
        self.log_events = log_events
        self.gate = gate
        self.tape = tape
        self._pump: asyncio.Task | None = None
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
        self.stats.request_times.append(time.monotonic())
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
            self._handler, self.host, self.port, compression=None, max_size=1 << 22,
            ping_interval=self.keepalive,
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        if self.tape:
            self._pump = asyncio.create_task(self._run_tape())
        log.info("%s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
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

    def drop_connections(self) -> int:
        """Abort every connection's TCP transport, as a network failure would."""
        conns = list(self._conns.values())
        for c in conns:
            c.ws.transport.abort()
        return len(conns)

    def inject_frame(self, raw: bytes | str, binary: bool = False) -> int:
        """Write ``raw`` verbatim (even invalid UTF-8) as one text frame (or a binary one) to
        every connection; returns how many got it."""
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        frame = ws_frame(data, OP_BINARY) if binary else ws_text_frame(data)
        n = sum(c.write(frame) for c in list(self._conns.values()))
        self.stats.injected += n
        return n

    async def send_oversized(self, size: int, fragment: int = 0, index: int | None = None) -> int:
        """Send one text message of ``size`` bytes (a JSON object padded with ``x``) to every
        connection, or to the ``index``-th accepted one: as a single frame, or in fragments of
        ``fragment`` bytes (the message is produced piece by piece, never held whole). Returns
        how many connections got it."""
        conns = [c for c in list(self._conns.values()) if index is None or c.index == index]
        head, tail = '{"pad":"', '"}'
        pad = size - len(head) - len(tail)
        if pad < 0:
            raise ValueError(f"an oversized message needs at least {len(head) + len(tail)} bytes")
        n = 0
        for c in conns:
            # a client that refuses the message may close or reset while it is being written
            with contextlib.suppress(ConnectionClosed, ConnectionError):
                if fragment <= 0:
                    if not c.write(ws_text_frame((head + "x" * pad + tail).encode())):
                        continue
                    n += 1
                    await c.drain()
                else:  # websockets sends an iterable as one fragmented message
                    n += 1
                    await c.ws.send(_padded(head, pad, tail, fragment))
        self.stats.injected += n
        return n

    # -- faults --------------------------------------------------------------------------------
    async def inject(self, fault: Fault, amount: float = 0.0) -> int:
        """Apply ``fault`` now; returns how many connections it touched (or 1 if global)."""
        f = self.faults
        conns = list(self._conns.values())
        if fault is Fault.DISCONNECT:
            return self.drop_connections()
        if fault is Fault.STALL:
            # Stop reading too: otherwise the WebSocket library keeps answering pings.
            f.stall = True
            for c in conns:
                c.ws.transport.pause_reading()
        elif fault is Fault.HEARTBEATS_ONLY:
            f.heartbeats_only = True
        elif fault is Fault.RATE_SCALE:
            if not amount > 0:
                raise ValueError("rate_scale: amount must be > 0 (no data at all: heartbeats_only)")
            f.rate_scale = amount
            self._repace()
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
        elif fault is Fault.OVERSIZED_FRAME:
            return await self.send_oversized(int(amount))
        elif fault is Fault.OVERSIZED_FRAGMENTED:
            return await self.send_oversized(int(amount), fragment=1 << 16)
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
        if self.faults.rate_scale != 1.0:
            self._repace()
        self.faults.clear()
        self.market.skip_sequence(0)
        self.market.exchange_delay_ns = 0
        self.market.extra_offset_bps = 0.0

    def _repace(self) -> None:
        """The rate changed: every stream restarts its pacing (no burst, no backlog)."""
        for c in self._conns.values():
            c.changed = True

    # -- per connection ------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws, self._n)
        self._n += 1
        if self.faults.stall:  # a stalled server reads nothing, not even pings
            ws.transport.pause_reading()
        self._conns[conn.index] = conn
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.stats.connect_times.append(time.monotonic())
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
        with contextlib.suppress(ConnectionClosed):
            if self.tape:
                while await self._write(conn, self._encode(conn, await conn.tape.get())):
                    pass
            elif self.gate is not None:
                await self._stream_gated(conn, self.gate)
            else:
                await self._stream_paced(conn)

    def _chunk_events(self) -> int:
        unit = self.pace_unit
        return max(unit, self.fast_chunk - self.fast_chunk % unit)

    async def _stream_paced(self, conn: Conn) -> None:
        cfg = self.cfg
        unit = self.pace_unit
        chunk = self._chunk_events()
        n_all = max(1, len(self.market.symbols))
        sent = 0
        t0, paced = time.monotonic(), 0
        while True:
            limit = cfg.max_events - sent if cfg.max_events else chunk
            if not conn.symbols or limit <= 0:
                conn.wake.clear()
                await conn.wake.wait()
                conn.changed = True
                continue
            if self.faults.stall or self.faults.heartbeats_only:
                conn.changed = True  # pacing restarts afterwards: no burst of the missed events
                await asyncio.sleep(TICK)
                continue
            if cfg.rate == 0:
                n = chunk
            else:
                rate = cfg.rate * self.faults.rate_scale * len(conn.symbols) / n_all
                now = time.monotonic()
                if conn.changed:
                    conn.changed = False
                    t0, paced = now, 0
                due = int((now - t0) * rate) - paced
                if due > max(rate, chunk):  # a client that stopped reading: drop the backlog
                    t0, paced, due = now - unit / rate, 0, unit
                if due < unit and due < limit:
                    await asyncio.sleep(max(self.tick, (paced + unit) / rate - (now - t0)))
                    continue
                n = min(due - due % unit, chunk) or due
                paced += n
            n = min(n, limit)
            if not await self._write(conn, self._prepare(conn, n)):
                return
            sent += n
            if sent == cfg.max_events:
                self.stats.finished += 1
            # A write that fits the socket buffer does not suspend: yield, or a server behind
            # its rate (or at rate 0) starves its other connections and heartbeats.
            await asyncio.sleep(0)

    async def _stream_gated(self, conn: Conn, gate: asyncio.Event) -> None:
        while not conn.symbols:
            conn.wake.clear()
            await conn.wake.wait()
        total, step = self.cfg.max_events, self._chunk_events()
        chunks = []
        for made in range(0, total, step):
            chunks.append(self._prepare(conn, min(step, total - made)))
            await asyncio.sleep(0)  # heartbeats and requests go on while we generate
        self.stats.prepared += 1
        await gate.wait()
        for c in chunks:
            if not await self._write(conn, c):
                return
        self.stats.finished += 1

    async def _run_tape(self) -> None:
        """Generate the market at ``cfg.rate`` and hand each connection its instruments' part."""
        chunk = self._chunk_events()
        everything = list(range(len(self.market.symbols)))
        t0, paced = time.monotonic(), 0
        rate = self.cfg.rate
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            if self.faults.stall or self.faults.heartbeats_only:
                t0, paced = now, 0  # nothing happens meanwhile: no burst afterwards
                continue
            if rate != self.cfg.rate * self.faults.rate_scale:  # paced afresh at the new rate
                rate = self.cfg.rate * self.faults.rate_scale
                t0, paced = now, 0
            due = int((now - t0) * rate) - paced
            if due > max(rate, chunk):  # the loop was blocked: do not make up for it
                t0, paced, due = now, 0, 0
            if due <= 0:
                continue
            paced += due
            ev = self.market.events(everything, due)
            for conn in list(self._conns.values()):
                if conn.symbols:
                    mine = np.isin(ev.symbol, conn.symbols)
                    if mine.any():
                        conn.tape.put_nowait(ev.take(mine))

    def _prepare(self, conn: Conn, n: int) -> _Chunk:
        return self._encode(conn, self.market.events(conn.symbols, n))

    def _encode(self, conn: Conn, ev: EventBatch) -> _Chunk:
        msgs = self.format_events(conn, ev)
        if self.write_frames:
            return _Chunk(ev, b"".join([ws_text_frame(m.encode()) for m in msgs]), len(msgs))
        return _Chunk(ev, msgs, len(msgs))

    async def _write(self, conn: Conn, chunk: _Chunk) -> bool:
        """Write ``chunk`` and count it; False once the connection is gone."""
        if isinstance(chunk.data, bytes):
            if not conn.write(chunk.data):
                return False
            await conn.drain()
        else:
            for msg in chunk.data:
                await conn.send(msg)
        self._account(chunk.ev, chunk.frames)
        return True

    def _account(self, ev: EventBatch, frames: int) -> None:
        st = self.stats
        st.events += len(ev)
        st.frames += frames
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
                    float(ev.price[i]), float(ev.size[i]), "buy" if ev.taker_buy[i] else "sell",
                    int(ev.seq[i]), int(ev.ts_exchange[i]), int(ev.ts_provider[i]),
                )  # fmt: skip
            if quotes.any():
                i = int(np.flatnonzero(quotes)[-1])
                sym.last_quote = (
                    float(ev.bid[i]), float(ev.bid_size[i]), float(ev.ask[i]),
                    float(ev.ask_size[i]), int(ev.seq[i]), int(ev.ts_exchange[i]),
                    int(ev.ts_provider[i]),
                )  # fmt: skip
        if self.log_events:
            st.log.extend(event_tuples(ev, names))


def _padded(head: str, pad: int, tail: str, fragment: int) -> Iterator[str]:
    """``head + "x" * pad + tail`` in pieces of ``fragment`` characters (head and tail apart)."""
    yield head
    while pad > 0:
        k = min(fragment, pad)
        yield "x" * k
        pad -= k
    yield tail


def event_tuples(ev: EventBatch, names: list[str]) -> list[tuple]:
    """``ev`` as the tuples of :attr:`ServerStats.log`."""
    cols = zip(
        ev.symbol.tolist(), ev.is_quote.tolist(), ev.price.tolist(), ev.size.tolist(),
        ev.taker_buy.tolist(), ev.bid.tolist(), ev.bid_size.tolist(), ev.ask.tolist(),
        ev.ask_size.tolist(), ev.seq.tolist(), ev.ts_exchange.tolist(), ev.ts_provider.tolist(),
        strict=True,
    )  # fmt: skip
    return [
        ("quote", names[s], b, bq, a, aq, seq, t, p)
        if q
        else ("trade", names[s], px, sz, "buy" if buy else "sell", seq, t, p)
        for s, q, px, sz, buy, b, bq, a, aq, seq, t, p in cols
    ]


class ServerThread(LoopThread):
    """Local servers on their own event loop in a background thread (tests, tools)."""

    def inject(self, fault: Fault, amount: float = 0.0, i: int = 0) -> int:
        return self.call(self.servers[i].inject, fault, amount)
