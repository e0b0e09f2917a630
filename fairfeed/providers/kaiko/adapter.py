"""Kaiko Stream adapter: trades and top of book over gRPC, into records.

Connection model. One gRPC channel (one HTTP/2 connection) per adapter carries, for each
``(exchange, instrument class)`` among the subscriptions, one ``StreamTradesServiceV1`` call and
one ``StreamMarketUpdateServiceV1`` call with the top-of-book commodity; the criteria's ``code``
lists that group's instruments comma-separated (Kaiko selects the cartesian product, so grouping
by exchange and class selects exactly what was subscribed). The API key travels as
``authorization: Bearer <key>`` call metadata on every call; the channel is TLS unless
``ProviderConfig.tls`` is false (the local server is plaintext). All calls form one *session*:
when any call ends, fails or goes silent, the whole session is torn down and re-established
after a backoff delay, and every call is re-subscribed.

Speed (bench/test_bench_kaiko.py). Python grpcio costs tens of µs per streamed message, so each
call is read with the synchronous API in its own thread on a channel with grpc's experimental
``SingleThreadedUnaryStream`` option (the read loop polls the completion queue in the calling
thread instead of handing every message over from grpc's own thread), with no response
deserializer: the thread gets raw bytes and :mod:`.parse` decodes them straight into a record
buffer. The thread never calls ``ctx.emit`` (which writes the worker's single-producer ring):
records accumulate in a bounded buffer under a lock and the loop is woken with
``call_soon_threadsafe`` once per batch (a wake-up is only requested when none is pending, so
while the loop is busy the batch simply grows). When the buffer is full the reading thread waits
for the loop to drain it: memory is bounded and back-pressure reaches the HTTP/2 flow control.
While the worker's ring is full (``pause_reading``) the loop leaves the buffer alone, so that is
how a full ring pushes back on the server.

Health. Reconnects use :class:`Backoff` (capped, jittered; reset only once a session delivered
data, so a server that accepts and then fails cannot cause a hot loop). RESOURCE_EXHAUSTED (rate
limit) waits at least the option ``rate_limit_pause`` (default 5 s), or the ``retry-after``
trailer in seconds when the server sends a longer one, while the backoff keeps growing. Other
refusals (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND...) count a subscribe
error and retry on the normal schedule. Kaiko has no heartbeat,
so a call is stale when it delivered no *record* (parse errors and empty messages do not count)
for ``stale_after`` seconds: pick it above the quietest subscribed market's normal silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import grpc
import grpc.experimental
import numpy as np
from kaikosdk import sdk_pb2
from kaikosdk.core.instrument_criteria_pb2 import InstrumentCriteria
from kaikosdk.stream.market_update_v1 import commodity_pb2
from kaikosdk.stream.market_update_v1.request_pb2 import StreamMarketUpdateRequestV1
from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

from fairfeed.core.counters import Slot
from fairfeed.core.options import KaikoOptions, split_key
from fairfeed.core.records import (
    RECORD_DTYPE,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.providers.base import Adapter, IngestContext, required_api_key
from fairfeed.providers.health import Health
from fairfeed.providers.kaiko.parse import KaikoParser
from fairfeed.providers.kaiko.symbols import KaikoSymbols
from fairfeed.providers.parsing import ErrorLog

log = logging.getLogger(__name__)


def _method_path(service: str) -> str:
    """``/package.Service/Subscribe`` from the generated descriptors of ``kaikosdk``."""
    svc = sdk_pb2.DESCRIPTOR.services_by_name[service]
    return f"/{svc.full_name}/{svc.methods_by_name['Subscribe'].name}"


_HEADERS_SETTLE = 0.03  # seconds a call must stay open after its headers to count as subscribed
_MAX_DEAD_LETTERS = 64  # malformed messages kept per hand-off; more are counted as dropped

TRADES_METHOD = _method_path("StreamTradesServiceV1")
MARKET_UPDATE_METHOD = _method_path("StreamMarketUpdateServiceV1")

# Refusals of a subscription (as opposed to a broken connection).
SUBSCRIBE_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def parse_target(url: str, tls: bool) -> tuple[str, bool]:
    """``(host:port, tls)`` from ``host:port``, ``grpc://host:port`` (plaintext) or
    ``grpcs://host:port`` (TLS); without a scheme ``tls`` decides; the port defaults to 443."""
    if url.startswith("grpcs://"):
        url, tls = url[8:], True
    elif url.startswith("grpc://"):
        url, tls = url[7:], False
    url = url.rstrip("/")
    if ":" not in url.rsplit("]", 1)[-1]:
        url += ":443"
    return url, tls


class _Call:
    """One streaming call, read by its own thread."""

    def __init__(self, adapter: KaikoAdapter, name: str, method: str, request, parse) -> None:
        self.a = adapter
        self.name = name
        self.method = method
        self.request = request
        self.parse: Callable = parse
        self.session = 0
        self.call = None
        self.thread: threading.Thread | None = None
        self.subscribed = False  # headers arrived (loop side)
        self.headers_at = 0.0
        self.ended: asyncio.Event | None = None
        self.end: tuple[grpc.StatusCode, str, float | None] | None = None
        self.last_data = 0.0  # monotonic time of the last message that gave records
        self.data = False  # gave records in this session

    def start(self, channel: grpc.Channel, session: int, metadata) -> None:
        self.session = session
        self.subscribed = False
        self.headers_at = 0.0
        self.end = None
        self.data = False
        self.last_data = time.monotonic()
        self.ended = asyncio.Event()
        multicallable = channel.unary_stream(
            self.method, request_serializer=type(self.request).SerializeToString
        )
        self.thread = threading.Thread(
            target=self._read,
            args=(multicallable, metadata, session, asyncio.get_running_loop()),
            name=f"kaiko-{self.name}",
            daemon=True,
        )
        self.thread.start()

    def cancel(self) -> None:
        call = self.call
        if call is not None:
            with contextlib.suppress(Exception):
                call.cancel()

    def _read(self, multicallable, metadata, session: int, loop: asyncio.AbstractEventLoop) -> None:
        a = self.a
        code, details, retry_after = grpc.StatusCode.OK, "stream ended by the server", None
        try:
            call = multicallable(self.request, metadata=metadata)
            self.call = call
            if a._session != session:
                call.cancel()
            # No call.initial_metadata() here: with SingleThreadedUnaryStream it waits while
            # holding the call's lock, so a cancel() from the loop would block the loop.
            ingest = a._ingest
            for raw in call:
                if not ingest(self, raw, session):
                    break
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            with contextlib.suppress(Exception):
                for k, v in exc.trailing_metadata() or ():
                    if k == "retry-after":
                        retry_after = float(v)
        except Exception as exc:  # never let a reader thread die silently
            code, details = grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"
            log.exception("%s: reader thread failed", self.name)
        _post(loop, a._on_call_end, self, session, code, details, retry_after)


def _has_headers(call) -> bool:
    """Whether the response headers of ``call`` arrived (read without taking its lock)."""
    state = getattr(call, "_state", None)
    return (
        state is not None
        and getattr(state, "initial_metadata", None) is not None
        and getattr(state, "code", None) is None
    )


def _post(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
        loop.call_soon_threadsafe(fn, *args)


class KaikoAdapter(Adapter):
    """Streams the context's subscriptions from Kaiko Stream (or the local :class:`KaikoServer`).

    The API key is read from the environment variable named by ``provider.api_key_env``;
    ``stale_after`` is ``provider.stale_after`` or else 30 s (5 s for a served simulator). The
    options (:class:`~fairfeed.core.options.KaikoOptions`): the reconnect backoff and
    ``rate_limit_pause``; ``trades`` / ``quotes`` choose the services; ``codes`` /
    ``amount_units`` the symbol table overrides; ``buffer_records`` bounds the records waiting
    for the loop; ``batch_delay`` (seconds) is how long the loop lets records gather after the
    first one before it emits them (one wake-up per batch instead of one per message: the main
    CPU saving over a plain client; 0 = emit at once).
    """

    options: KaikoOptions
    log_interval = 1.0
    api_key_service = "Kaiko"

    def __init__(self, ctx: IngestContext) -> None:
        super().__init__(ctx)
        p = ctx.provider
        o = self.options
        api_key = required_api_key(p, self.api_key_service)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.target, self.tls = parse_target(ctx.url, p.tls)
        self.symbols = KaikoSymbols(
            overrides={split_key(k): v for k, v in o.codes.items()},
            amount_units={split_key(k): v for k, v in o.amount_units.items()},
        )
        self.backoff = ctx.backoff(o.backoff_base, o.backoff_cap)
        self.rate_limit_pause = o.rate_limit_pause
        self.stale_after = p.stale_after or (
            5 * p.serve.heartbeat_interval if p.serve is not None else 30.0
        )
        self.subscribe_timeout = o.subscribe_timeout
        self.batch_delay = o.batch_delay
        trades, quotes, buffer_records = o.trades, o.quotes, o.buffer_records
        self.channel_options = [
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", 16 << 20),
        ]
        self.parser = KaikoParser.for_subscriptions(ctx.subscriptions, symbols=self.symbols)
        if not ctx.subscriptions:
            self.parser.provider = ctx.registry.provider_id(p.name)
        groups: dict[tuple[str, str], list[str]] = {}  # calls grouped by (exchange, class)
        for exchange, kclass, code in self.parser.instruments:
            groups.setdefault((exchange, kclass), []).append(code)
        self.calls: list[_Call] = []
        for (exchange, kclass), codes in groups.items():
            crit = InstrumentCriteria(
                exchange=exchange, instrument_class=kclass, code=",".join(codes)
            )
            label = f"{p.name}-{exchange}-{kclass}"
            if trades:
                req = StreamTradesRequestV1(instrument_criteria=crit)
                self.calls.append(
                    _Call(self, f"{label}-trades", TRADES_METHOD, req, self.parser.parse_trade)
                )
            if quotes:
                req = StreamMarketUpdateRequestV1(
                    instrument_criteria=crit, commodities=[commodity_pb2.SMUC_TOP_OF_BOOK]
                )
                self.calls.append(
                    _Call(self, f"{label}-tob", MARKET_UPDATE_METHOD, req, self.parser.parse_update)
                )
        venues: dict[int, int] = {}
        for s in ctx.subscriptions:
            venues.setdefault(s.venue_id, s.class_code)
        order = sorted(venues)
        # the WebSocket base's health rules, for the whole session (every venue it carries)
        self.health = Health(
            ctx, p.name, self.parser.provider, order, [venues[v] for v in order], self._drain
        )
        # thread -> loop hand-off: a bounded double buffer under one lock
        self._cap = buffer_records
        self._fill = np.zeros(buffer_records, RECORD_DTYPE)
        self._spare = np.zeros(buffer_records, RECORD_DTYPE)
        self._n = 0
        self._frames = 0
        self._errors = 0
        self._dead: list[tuple[str, bytes]] = []  # malformed messages for the dead-letter topic
        self._dead_dropped = 0
        self._signaled = False
        self._held = False  # a wake-up arrived while reading was paused: drain on resume
        self._cond = threading.Condition(threading.Lock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closed = False
        self._connected = False  # this session sent STATUS_CONNECTED
        self._rate_limited = False
        self._retry_after: float | None = None
        self.connections = 0  # sessions that got every call subscribed
        self.subscribe_errors = 0
        self.rate_limits = 0
        self.stale_reconnects = 0
        self._parse_log = ErrorLog(log, f"{p.name}: malformed message", self.log_interval)
        self._conn_log = ErrorLog(log, f"{p.name}: connection", self.log_interval)

    # --- reader threads -> loop ------------------------------------------------------------

    def _ingest(self, c: _Call, raw: bytes, session: int) -> bool:
        """Reader thread: parse one message into the buffer; False when the session is over."""
        ts = time.time_ns()
        with self._cond:
            while self._n >= self._cap:
                if self._session != session:
                    return False
                self._cond.wait(0.1)
            if self._session != session:
                return False
            r = c.parse(raw, self._fill, self._n, ts)
            self._frames += 1
            if r > 0:
                self._n += r
                c.last_data = time.monotonic()
                c.data = True
            elif r < 0:
                self._errors += 1
                error = self.parser.error
                self._parse_log(f"{c.name}: {error}", raw)
                if len(self._dead) < _MAX_DEAD_LETTERS:
                    self._dead.append((error, bytes(raw)))
                else:
                    self._dead_dropped += 1
            if not self._signaled:
                self._signaled = True
                _post(self._loop, self._drain_later)
        return True

    def _drain_later(self) -> None:
        """Loop: the readers have records; let a batch gather for ``batch_delay`` first."""
        if self.batch_delay > 0 and not self._closed:
            self._loop.call_later(self.batch_delay, self._drain_unless_paused)  # type: ignore[union-attr]
        else:
            self._drain_unless_paused()

    def _drain_unless_paused(self) -> None:
        """Loop: the readers' wake-up. While paused the records stay in the hand-off buffer
        (still flagged, so readers post no more wake-ups): once it is full they wait."""
        if self.reading_paused and not self._closed:
            self._held = True
        else:
            self._drain()

    # --- back-pressure (the worker's ring is full) --------------------------------------------

    def resume_reading(self) -> None:
        """Hand the records held while paused to the loop (never from inside this call).

        While paused (the base's flag) the loop leaves the hand-off buffer alone: the reader
        threads block once it is full and HTTP/2 flow control pushes back on the server.
        Explicit flushes (health records, session end) still drain, so records stay in order."""
        super().resume_reading()
        if self._held:
            self._held = False
            self._loop.call_soon(self._drain)  # type: ignore[union-attr]

    def _drain(self) -> None:
        """Loop: emit what the readers buffered."""
        with self._cond:
            buf, n = self._fill, self._n
            frames, errors = self._frames, self._errors
            dead, dead_dropped = self._dead, self._dead_dropped
            self._fill, self._spare = self._spare, buf
            self._n = self._frames = self._errors = self._dead_dropped = 0
            self._dead = []
            self._signaled = False
            self._cond.notify_all()
        if self._closed:
            return
        c = self.ctx.counters
        if n:
            try:
                self.ctx.emit(buf[:n])
            except Exception:
                log.exception("%s: emit failed, %d records lost", self.ctx.provider.name, n)
            c.add(Slot.RECORDS_IN, n)
            if self.backoff.attempts:
                self.backoff.reset()  # this session delivers data: the next failure starts over
        if frames:
            c.add(Slot.FRAMES_IN, frames)
        if errors:
            c.add(Slot.PARSE_ERRORS, errors)
        for error, frame in dead:
            self.ctx.dead_letter(error, frame)
        if dead_dropped:
            c.add(Slot.DEAD_LETTERS_DROPPED, dead_dropped)

    def _check_subscribed(self) -> None:
        """Loop: a call is subscribed once its response headers (or a record) arrived."""
        now = time.monotonic()
        for c in self.calls:
            if c.subscribed or c.end is not None:
                continue
            if c.data:
                c.subscribed = True
            elif _has_headers(c.call):
                # A refusal can also deliver (empty) headers, just before its status: a call
                # counts as subscribed when it is still open a moment after its headers.
                if not c.headers_at:
                    c.headers_at = now
                elif now - c.headers_at >= _HEADERS_SETTLE:
                    c.subscribed = True
        if not self._connected and all(x.subscribed for x in self.calls):
            self._connected = True
            self.connections += 1
            self._mark_connected(True)
            self._status(STATUS_CONNECTED)
            log.info(
                "%s: subscribed %d calls on %s",
                self.ctx.provider.name,
                len(self.calls),
                self.target,
            )

    def _on_call_end(self, c: _Call, session: int, code, details: str, retry_after) -> None:
        c.end = (code, details, retry_after)
        if c.ended is not None:
            c.ended.set()
        if session == self._session:
            self._wake.set()

    # --- session loop ------------------------------------------------------------------------

    def _channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(
                self.target, grpc.ssl_channel_credentials(), options=self.channel_options
            )
        return grpc.insecure_channel(self.target, options=self.channel_options)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        first = True
        while not self._stop.is_set():
            if not first:
                self.ctx.counters.add(Slot.RECONNECTS)
            first = False
            await self._session_once()
            if not self._stop.is_set():
                await self._pause()

    async def _session_once(self) -> None:
        self._session += 1
        session = self._session
        self._connected = False
        self._rate_limited = False
        self._retry_after = None
        self._wake.clear()
        channel = self._channel()
        for c in self.calls:
            c.start(channel, session, self._metadata)
        reason = ""
        try:
            reason = await self._watch(session)
        finally:
            with self._cond:
                self._session += 1  # readers drop what they read from now on
                self._cond.notify_all()
            for c in self.calls:
                c.cancel()
            await self._join()
            channel.close()
            self._drain()
            self._end_session(reason)

    async def _watch(self, session: int) -> str:
        start = time.monotonic()
        tick = max(0.01, min(0.25, self.stale_after / 4, self.subscribe_timeout / 4))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick if self._connected else 0.02)
            self._wake.clear()
            if self._stop.is_set():
                return ""
            ended = [c for c in self.calls if c.end is not None]
            if ended:
                return self._judge(ended)
            now = time.monotonic()
            if not self._connected:
                self._check_subscribed()
                if self._connected:
                    continue
                if now - start > self.subscribe_timeout:
                    return "no answer to subscribe"
                continue
            for c in self.calls:
                if Health.stale(now, c.last_data, self.stale_after):
                    self.stale_reconnects += 1
                    return f"{c.name}: no data for {now - c.last_data:.1f} s"

    def _judge(self, ended: list[_Call]) -> str:
        """Classify the first call end of a session; returns the disconnect reason."""
        c = ended[0]
        code, details, retry_after = c.end  # type: ignore[misc]
        if code in SUBSCRIBE_REFUSALS and not c.data:
            self.subscribe_errors += 1
            self.ctx.counters.add(Slot.SUBSCRIBE_ERRORS)
            self._status(STATUS_SUBSCRIBE_ERROR)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.rate_limits += 1
                self._rate_limited = True
                self._retry_after = retry_after
            self._conn_log(f"{c.name}: subscription refused: {code.name} {details}")
            return ""
        return f"{c.name}: {code.name} {details}"

    async def _join(self) -> None:
        for c in self.calls:
            if c.ended is not None and c.end is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.ended.wait(), 5.0)
            if c.thread is not None:
                c.thread.join(timeout=1.0)

    def _end_session(self, reason: str) -> None:
        if self._connected:
            self._connected = False
            self._status(STATUS_DISCONNECTED)
            self._mark_connected(False)
            if not self._stop.is_set():
                self.ctx.counters.add(Slot.DISCONNECTS)
        if reason and not self._stop.is_set():
            self._conn_log(f"{reason}; reconnecting to {self.target}")

    async def _pause(self) -> None:
        delay = self.backoff.next_delay()
        if self._rate_limited:
            delay = max(delay, self.rate_limit_pause, self._retry_after or 0.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def close(self) -> None:
        """Stop every call, flush what is buffered; no records are emitted afterwards."""
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._session += 1
            self._cond.notify_all()
        for c in self.calls:
            c.cancel()
        await self._join()
        self._drain()
        if self._connected:
            self._connected = False
            self._status(STATUS_DISCONNECTED)
        self._closed = True
        self._mark_connected(False)

    # --- status ----------------------------------------------------------------------------

    def _status(self, code: int) -> None:
        if not self._closed:
            self.health.status(code)  # after the data read before the change

    def _mark_connected(self, up: bool) -> None:
        self.health.connected(up)
