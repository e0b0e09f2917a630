"""A simulated market-data provider: a WebSocket server streaming random-walk trades and quotes.

Protocol: docs/simulator-protocol.md. The server is a :class:`LocalWsServer`: the random walk
(:mod:`.market`), pacing, connection bookkeeping, statistics, the faults of :mod:`.faults`, the
raw-frame injection and the benchmark gate are the base's. This module says only what is the
simulator's: its wire encoding (batch frames of ``cfg.batch`` events), its answers to
subscribe and unsubscribe, its heartbeat and malformed message.

Speed matters for ``rate = 0`` (as fast as possible, what the benchmarks use): events are
formatted straight to JSON text and written as pre-built WebSocket frames, one transport write
per chunk (``write_frames``; the library's ``send`` costs several µs per frame).

Semantics worth knowing (also in the protocol document):

* The random walk and the sequence of an instrument are server-wide: a client that reconnects
  continues where the previous connection stopped (events generated for a connection that broke
  before they were written are lost, like on a real feed, and show up as a ``seq`` gap).
* ``rate`` is events per second over *all* instruments in ``cfg.prices``: each instrument gets
  ``rate / len(prices)`` events/s, so a connection subscribed to k instruments receives
  ``rate * k / len(prices)`` — the total is ``rate`` however subscriptions are partitioned.
* ``max_events`` counts per connection; after it the connection receives heartbeats only.
* :attr:`SimulatorServer.stats` counts what was actually written to sockets, server-wide
  (``keep_log=True``: every event, in ``stats.log``).

Faults (:meth:`SimulatorServer.inject`): every one of :class:`Fault` but RECONNECT_NOTICE (the
protocol has no such message). REJECT_SUBSCRIBE answers subscribe requests with an error;
SEQUENCE_GAP skips ``seq`` numbers.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import orjson

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.market import EventBatch
from fairfeed.local.thread import LoopThread
from fairfeed.local.wsserver import Conn, LocalWsServer, ServerStats
from fairfeed.providers.simulator.wire import (
    CLIENT_REQUEST_DECODER,
    Error,
    Subscribe,
    Subscribed,
    Unsubscribed,
    encode,
    ws_text_frame,
)

_SIDE = ('"sell"', '"buy"')  # indexed by taker_buy


class SimulatorServer(LocalWsServer):
    """One simulated provider. ``port=0`` binds a free port; :attr:`port` holds it after start.

    ``gate``: a fixed, pre-generated workload for benchmarks (see :mod:`.wsserver`).
    """

    keepalive = None  # the protocol has its own heartbeats
    write_frames = True
    tick = 0.0  # a paced frame is written when it is due
    fast_chunk = 4096

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        keep_log: bool = False,
        gate: asyncio.Event | None = None,
        **base: Any,  # the shared server's (host, port, ...)
    ) -> None:
        if cfg.batch < 1 or cfg.rate < 0 or not 0 <= cfg.quote_ratio <= 1:
            raise ValueError("simulator needs batch >= 1, rate >= 0, 0 <= quote_ratio <= 1")
        super().__init__(name, cfg, **base, log_events=keep_log, gate=gate)
        self.heartbeat_interval = cfg.heartbeat_interval
        self.pace_unit = cfg.batch  # a frame is sent once `batch` events are due
        self._json_names = [orjson.dumps(s).decode() for s in self.market.symbols]

    # --- requests ---------------------------------------------------------------------------

    def _answer(self, conn: Conn, msg: msgspec.Struct) -> None:
        # A raw write, not an await: a subscribe answer is on the wire before any of its data.
        if isinstance(msg, Error):
            self.stats.request_errors += 1
        conn.write(ws_text_frame(encode(msg)))

    async def on_message(self, conn: Conn, text: str) -> None:
        try:
            req = CLIENT_REQUEST_DECODER.decode(text)
        except msgspec.DecodeError as exc:
            self._answer(conn, Error(id=_request_id(text), message=f"bad request: {exc}"))
            return
        known, unknown = self.indexes(list(req.symbols))
        if unknown:
            self._answer(conn, Error(id=req.id, message=f"unknown symbol {' '.join(unknown)}"))
        elif not isinstance(req, Subscribe):
            conn.unsubscribe(known)
            self._answer(conn, Unsubscribed(id=req.id, symbols=list(req.symbols)))
        elif self.rejecting():
            self._answer(conn, Error(id=req.id, message="rate limited: too many requests"))
        else:
            self._answer(conn, Subscribed(id=req.id, symbols=list(req.symbols)))
            conn.subscribe(known)

    # --- messages ---------------------------------------------------------------------------

    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        # The hot path at rate = 0: one f-string per event over plain lists; the timestamp tail
        # is formatted once when the chunk has one stamp (the market's way), 20% of the cost.
        if len(ev) == 0:
            return []
        names = self._json_names
        te, tp = ev.ts_exchange, ev.ts_provider
        if (te == te[0]).all() and (tp == tp[0]).all():
            tails: Iterable[str] = itertools.repeat(f',"T":{te[0]},"P":{tp[0]}}}', len(ev))
        else:
            tails = [f',"T":{t},"P":{p}}}' for t, p in zip(te.tolist(), tp.tolist(), strict=True)]
        cols = zip(
            ev.symbol.tolist(), ev.is_quote.tolist(), ev.price.tolist(), ev.size.tolist(),
            ev.taker_buy.tolist(), ev.bid.tolist(), ev.bid_size.tolist(), ev.ask.tolist(),
            ev.ask_size.tolist(), ev.seq.tolist(), tails, strict=True,
        )  # fmt: skip
        texts = [
            f'{{"e":"quote","s":{names[s]},"bp":{b!r},"bq":{bq!r},"ap":{a!r},"aq":{aq!r},'
            f'"seq":{seq}{tail}'
            if q
            else f'{{"e":"trade","s":{names[s]},"p":{px!r},"q":{sz!r},"side":{_SIDE[buy]},'
            f'"seq":{seq}{tail}'
            for s, q, px, sz, buy, b, bq, a, aq, seq, tail in cols
        ]
        b = self.cfg.batch
        return [
            '{"type":"batch","events":[' + ",".join(texts[i : i + b]) + "]}"
            for i in range(0, len(texts), b)
        ]

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        return [f'{{"type":"heartbeat","ts":{time.time_ns()}}}']

    def malformed_message(self) -> str:
        return '{"type":"batch","events":[{"e":"trade","s":"BTC-USD","p":"not-a-number"'

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
        """A snapshot (deep copy) of server ``i``'s statistics."""
        return self.call(lambda: copy.deepcopy(self.servers[i].stats))

    def inject(self, raw: bytes | str, i: int = 0) -> int:
        """Write ``raw`` verbatim as one text frame to every connection of server ``i``."""
        return self.call(self.servers[i].inject_frame, raw)

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
