"""Simulator provider adapter: a picows WebSocket client that parses frames into records.

Per frame the work is: one msgspec decode plus one ``struct.pack_into`` per record (see
:mod:`.parse`). Everything else happens once per *read burst*: picows marks the last complete
frame of each socket read (``frame.last_in_buffer``), and only then are the accumulated records
handed to ``ctx.emit`` in one call and the counters updated (a counter update in shared memory
costs about as much as parsing an event, so it is never done per frame). ``ts_receive`` is taken
once per burst, at its first frame: every frame of one read arrived at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from fairfeed.backoff import Backoff
from fairfeed.hotpath.records import RECORD_DTYPE
from fairfeed.ipc.control import Slot
from fairfeed.providers.base import Adapter, IngestContext
from fairfeed.providers.simulator.parse import (
    CONTROL,
    NEED_SPACE,
    PARSE_ERROR,
    ErrorLog,
    FrameParser,
)
from fairfeed.providers.simulator.wire import Error, Subscribe, Subscribed, encode

log = logging.getLogger(__name__)

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_CONT = WSMsgType.CONTINUATION
_MIN_EVENT_BYTES = 30  # a valid event has >= 60 JSON bytes and yields <= 2 records


class _Listener(WSListener):
    """picows callbacks; the per-frame path lives here to keep attribute lookups few."""

    def __init__(self, adapter: SimulatorAdapter) -> None:
        super().__init__()
        self.a = adapter

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.a._on_connected(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.a._flush()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        a = self.a
        if a._closed:
            return
        mt = frame.msg_type
        if (mt is _TEXT or mt is _BINARY) and frame.fin and a._frag is None:
            payload = frame.get_payload_as_memoryview()
        elif mt is _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            a._flush()
            return
        elif mt is _TEXT or mt is _BINARY or mt is _CONT:
            payload = a._fragment(frame)
            if payload is None:
                if frame.last_in_buffer:
                    a._flush()
                return
        else:  # ping / pong (pongs are answered by picows)
            return
        if not a._ts:
            a._ts = time.time_ns()
        n = a._n
        if n and n + len(payload) // _MIN_EVENT_BYTES + 2 > a._cap:
            a._flush()
            n = 0
        r = a._parse(payload, a._buf, n, a._ts)
        a._frames += 1
        if r > 0:
            a._n = n + r
        elif r < 0:
            a._special(r, payload)
        if frame.last_in_buffer:
            a._flush()


class SimulatorAdapter(Adapter):
    """Streams ``ctx.instruments`` from a simulator server at ``ctx.url`` until closed.

    ``buffer_records`` bounds one ``emit`` call; ``backoff`` is the reconnect schedule (reset
    after each acknowledged subscribe); a connection silent for ``stale_after`` seconds (default:
    five heartbeat intervals of the served simulator, else 5 s) or whose subscribe is not
    answered within ``subscribe_timeout`` is dropped and re-established.
    """

    def __init__(
        self,
        ctx: IngestContext,
        *,
        buffer_records: int = 8192,
        backoff: Backoff | None = None,
        stale_after: float | None = None,
        subscribe_timeout: float = 5.0,
        log_interval: float = 1.0,
    ) -> None:
        super().__init__(ctx)
        self.parser = FrameParser.for_context(ctx)
        self._parse = self.parser.parse
        self._buf = np.zeros(buffer_records, RECORD_DTYPE)
        self._cap = buffer_records
        self._n = 0  # records buffered
        self._ts = 0  # ts_receive of the current burst, 0 = no burst yet
        self._frames = 0  # frames not yet counted
        self._frag: bytearray | None = None
        self.backoff = backoff or Backoff()
        if stale_after is None:
            serve = ctx.provider.serve
            stale_after = 5 * serve.heartbeat_interval if serve is not None else 5.0
        self.stale_after = stale_after
        self.subscribe_timeout = subscribe_timeout
        self.subscribe_errors = 0  # error answers to our subscribe (no Slot for it yet)
        self.subscribed = False
        self.connections = 0  # successful connects
        self._sub_id = 0
        self._last_rx = 0.0
        self._transport: WSTransport | None = None
        self._counted_up = False  # whether this adapter is counted in Slot.CONNECTED
        self._closed = False
        self._stop = asyncio.Event()
        self._parse_log = ErrorLog(log, f"{ctx.provider.name}: malformed frame", log_interval)
        self._conn_log = ErrorLog(log, f"{ctx.provider.name}: connection", log_interval)

    # --- hot-path helpers (called from _Listener) ---------------------------------------------

    def _flush(self) -> None:
        n = self._n
        c = self.ctx.counters
        if n:
            self._n = 0
            try:
                self.ctx.emit(self._buf[:n])
            except Exception:
                log.exception("%s: emit failed, %d records lost", self.ctx.provider.name, n)
            c.add(Slot.RECORDS_IN, n)
        if self._frames:
            c.add(Slot.FRAMES_IN, self._frames)
            self._frames = 0
        self._ts = 0
        self._last_rx = time.monotonic()

    def _special(self, r: int, payload) -> None:
        """A parse result that is not records: control answer, error, or a too-big batch."""
        if r == CONTROL:
            self._control(self.parser.control)
        elif r == PARSE_ERROR:
            self.ctx.counters.add(Slot.PARSE_ERRORS)
            self._parse_log(self.parser.error, bytes(payload))
        elif r == NEED_SPACE:  # a batch bigger than the whole buffer
            self._flush()
            big = np.zeros(self.parser.needed, RECORD_DTYPE)
            self._ts = self._ts or time.time_ns()
            n = self._parse(payload, big, 0, self._ts)
            if n > 0:
                self.ctx.emit(big[:n])
                self.ctx.counters.add(Slot.RECORDS_IN, n)

    def _fragment(self, frame: WSFrame) -> bytes | None:
        """Reassemble a fragmented message; the whole payload once its last part arrived."""
        if frame.msg_type is not _CONT:
            self._frag = bytearray()
        elif self._frag is None:  # a continuation without a start: ignore it
            return None
        self._frag += frame.get_payload_as_memoryview()
        if not frame.fin:
            return None
        payload, self._frag = bytes(self._frag), None
        return payload

    def _control(self, msg: object) -> None:
        if isinstance(msg, Subscribed):
            if msg.id == self._sub_id:
                self.subscribed = True
                self.backoff.reset()
                log.info("%s: subscribed %d instruments", self.ctx.provider.name, len(msg.symbols))
        elif isinstance(msg, Error):
            self.subscribe_errors += 1
            log.error(
                "%s: server refused request %s: %s", self.ctx.provider.name, msg.id, msg.message
            )
            if msg.id == self._sub_id and self._transport is not None:
                self._transport.disconnect()  # reconnect after a backoff delay

    def _on_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._frag = None
        self.subscribed = False
        self._last_rx = time.monotonic()
        self._sub_id += 1
        req = Subscribe(id=self._sub_id, symbols=list(self.ctx.instruments))
        transport.send(_TEXT, encode(req))

    # --- connection loop --------------------------------------------------------------------

    async def run(self) -> None:
        ctx = self.ctx
        first = True
        while not self._stop.is_set():
            if not first:
                ctx.counters.add(Slot.RECONNECTS)
            first = False
            try:
                transport, _ = await ws_connect(
                    lambda: _Listener(self), ctx.url, websocket_handshake_timeout=5
                )
            except (TimeoutError, OSError, WSError) as exc:
                self._conn_log(f"cannot connect to {ctx.url}: {exc!r}")
                await self._pause()
                continue
            self.connections += 1
            self._mark_connected(True)
            try:
                await self._watch(transport)
            finally:
                self._flush()
                self._transport = None
                self._mark_connected(False)
            if not self._stop.is_set():
                self._conn_log(f"disconnected from {ctx.url}")
                await self._pause()

    async def _watch(self, transport: WSTransport) -> None:
        """Return when the connection ends; drop it when silent or never subscribed."""
        done = asyncio.ensure_future(transport.wait_disconnected())
        start = time.monotonic()
        tick = min(0.5, self.stale_after / 4, self.subscribe_timeout / 4)
        try:
            while not done.done():
                await asyncio.wait([done], timeout=tick)
                now = time.monotonic()
                if done.done():
                    break
                if self._stop.is_set():
                    transport.disconnect()
                    break
                if not self.subscribed and now - start > self.subscribe_timeout:
                    self._conn_log("no answer to subscribe, reconnecting")
                    transport.disconnect()
                elif now - self._last_rx > self.stale_after:
                    self._conn_log(f"silent for {now - self._last_rx:.1f} s, reconnecting")
                    transport.disconnect()
            await done
        finally:
            done.cancel()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.backoff.next_delay())

    async def close(self) -> None:
        """Flush what is buffered, close the connection; no records are emitted afterwards."""
        self._stop.set()
        self._flush()
        self._closed = True
        t = self._transport
        if t is not None:
            with contextlib.suppress(Exception):
                t.send_close(WSCloseCode.OK)
                t.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t.wait_disconnected(), 2.0)
        self._mark_connected(False)

    def _mark_connected(self, up: bool) -> None:
        # CONNECTED counts the worker's open connections; several adapters share the slot.
        if up != self._counted_up:
            self._counted_up = up
            self.ctx.counters.add(Slot.CONNECTED, 1 if up else -1)
