"""Kaiko Stream adapter: trades, top of book and derivatives metrics over gRPC, into records.

Connection model. One gRPC channel (one HTTP/2 connection) per adapter carries, for each
``(exchange, instrument class)`` among the subscriptions, one ``StreamTradesServiceV1`` call and
one ``StreamMarketUpdateServiceV1`` call with the top-of-book commodity; the criteria's ``code``
lists that group's instruments comma-separated (Kaiko selects the cartesian product, so grouping
by exchange and class selects exactly what was subscribed). With the option ``derivatives``,
each perpetual and future subscription also gets one
``StreamDerivativesInstrumentMetricsServiceV1`` call of its own (mark, index, funding, open
interest): its responses name the exchange but neither class nor code, so only a call per
instrument tells whose values they are. The API key travels as
``authorization: Bearer <key>`` call metadata on every call; the channel is TLS unless
``ProviderConfig.tls`` is false (the local server is plaintext).

Liveness is judged per call, and only what is dead is reconnected:

* A call that ends (the server closed it, an error, a refusal, no answer within
  ``subscribe_timeout``) is restarted alone after its own capped, jittered backoff delay; the
  other calls stream on. Counted in Slot.STREAM_RESTARTS and logged; no status record.
* The channel is re-created (every call re-subscribed, Slot.RECONNECTS, a DISCONNECTED then
  CONNECTED status) only when it is dead: its connectivity is TRANSIENT_FAILURE or SHUTDOWN,
  every call ended with UNAVAILABLE, a call ended with UNAVAILABLE while the channel lost its
  transport (no longer READY), or HTTP/2 keepalive failed (``keepalive_time`` /
  ``keepalive_timeout``).
* A quiet call is not a dead one: Kaiko sends no heartbeat, and a market without trades sends
  nothing. The transport's liveness is keepalive's job; a subscription without data is the
  anomaly detector's (no data per subscription), not a reason to reconnect anything.

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

Health. Backoff: the channel's (reset once it delivered data, so a server that accepts and then
fails cannot cause a hot loop) and one per call (reset once that call delivered data).
RESOURCE_EXHAUSTED (rate limit) delays that call at least the option ``rate_limit_pause``
(default 5 s), or the ``retry-after`` trailer in seconds when the server sends a longer one,
while its backoff keeps growing. Other refusals (UNAUTHENTICATED, PERMISSION_DENIED,
INVALID_ARGUMENT, NOT_FOUND...) count a subscribe error and retry on the call's schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable

import grpc
import grpc.experimental
import numpy as np
from kaikosdk import sdk_pb2
from kaikosdk.core.instrument_criteria_pb2 import InstrumentCriteria
from kaikosdk.stream.derivatives_instrument_metrics_v1.request_pb2 import (
    StreamDerivativesInstrumentMetricsRequestV1,
)
from kaikosdk.stream.market_update_v1 import commodity_pb2
from kaikosdk.stream.market_update_v1.request_pb2 import StreamMarketUpdateRequestV1
from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

from fairfeed.core.backoff import Backoff
from fairfeed.core.counters import Slot
from fairfeed.core.options import KAIKO_DERIVATIVE_CLASSES, KaikoOptions
from fairfeed.core.records import (
    KIND_TRADE,
    RECORD_DTYPE,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.hotpath.plausible import check_plausible
from fairfeed.hotpath.sequence import SequenceTracker, missed
from fairfeed.ipc.lastids import LastIds
from fairfeed.providers.base import Adapter, IngestContext, required_api_key
from fairfeed.providers.health import Health
from fairfeed.providers.kaiko.parse import METRIC_RECORDS, KaikoParser
from fairfeed.providers.kaiko.symbols import KaikoSymbols, instrument_class
from fairfeed.providers.parsing import ErrorLog

log = logging.getLogger(__name__)


def _method_path(service: str) -> str:
    """``/package.Service/Subscribe`` from the generated descriptors of ``kaikosdk``."""
    svc = sdk_pb2.DESCRIPTOR.services_by_name[service]
    return f"/{svc.full_name}/{svc.methods_by_name['Subscribe'].name}"


_HEADERS_SETTLE = 0.03  # seconds a call must stay open after its headers to count as subscribed
# seconds an ended call waits before it is judged alone: when a transport dies, the ends of its
# other calls and the channel's new state arrive within this
_END_SETTLE = 0.05
_NO_ANSWER = grpc.StatusCode.DEADLINE_EXCEEDED  # a call unanswered for subscribe_timeout
_DEAD_STATES = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
_MAX_DEAD_LETTERS = 64  # malformed messages kept per hand-off; more are counted as dropped

TRADES_METHOD = _method_path("StreamTradesServiceV1")
MARKET_UPDATE_METHOD = _method_path("StreamMarketUpdateServiceV1")
METRICS_METHOD = _method_path("StreamDerivativesInstrumentMetricsServiceV1")
# the Kaiko classes whose subscriptions get a metrics call with the option `derivatives`
_METRICS_CLASSES = frozenset(instrument_class(c) for c in KAIKO_DERIVATIVE_CLASSES)

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


DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
# grpc's words for a message over the channel's receive limit: "(<size> vs. <limit>)"
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\.")


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


class _Attempt:
    """One try of a call: its gRPC call object, reader thread and liveness flag.

    ``live`` is cleared (under the adapter's lock) when the attempt is given up, so its reader
    thread drops what it reads from then on; a restart makes a new attempt instead of reusing
    one, so a late reader can never touch its successor."""

    __slots__ = ("call", "ended", "live", "thread")

    def __init__(self) -> None:
        self.call = None
        self.thread: threading.Thread | None = None
        self.ended = asyncio.Event()  # its reader thread has posted its end
        self.live = True


class _Call:
    """One streaming call (a service for one exchange and class), restarted on its own."""

    def __init__(
        self, adapter: KaikoAdapter, name: str, method: str, request, parse, backoff: Backoff,
        max_records: int = 1,
    ) -> None:  # fmt: skip
        self.a = adapter
        self.name = name
        self.method = method
        self.request = request
        self.parse: Callable = parse
        self.max_records = max_records  # the most records one message gives
        self.backoff = backoff  # this call's own restart schedule
        self.attempt: _Attempt | None = None
        self.subscribed = False  # headers arrived (loop side)
        self.headers_at = 0.0
        self.started_at = 0.0
        self.end: tuple[grpc.StatusCode, str, float | None] | None = None
        self.ended_at = 0.0
        self.restart_at = 0.0  # > 0: the call ended and restarts at this monotonic time
        self.refused = False  # its last end was a refusal of the subscription
        self.last_data = 0.0  # monotonic time of the last message that gave records
        self.data = False  # gave records in this attempt
        self.restarts = 0

    def start(self, channel: grpc.Channel, metadata) -> None:
        self.subscribed = False
        self.headers_at = 0.0
        self.end = None
        self.restart_at = 0.0
        self.data = False
        self.started_at = self.last_data = time.monotonic()
        attempt = self.attempt = _Attempt()
        multicallable = channel.unary_stream(
            self.method, request_serializer=type(self.request).SerializeToString
        )
        attempt.thread = threading.Thread(
            target=self._read,
            args=(multicallable, metadata, attempt, asyncio.get_running_loop()),
            name=f"kaiko-{self.name}",
            daemon=True,
        )
        attempt.thread.start()

    def stop(self) -> None:
        """Give up the current attempt: its reader drops what it reads, its call is cancelled."""
        attempt = self.attempt
        if attempt is None:
            return
        with self.a._cond:
            attempt.live = False
            self.a._cond.notify_all()
        call = attempt.call
        if call is not None:
            with contextlib.suppress(Exception):
                call.cancel()

    def _read(self, multicallable, metadata, attempt: _Attempt, loop) -> None:
        a = self.a
        code, details, retry_after = grpc.StatusCode.OK, "stream ended by the server", None
        try:
            call = multicallable(self.request, metadata=metadata)
            attempt.call = call
            if not attempt.live:
                call.cancel()
            # No call.initial_metadata() here: with SingleThreadedUnaryStream it waits while
            # holding the call's lock, so a cancel() from the loop would block the loop.
            ingest = a._ingest
            for raw in call:
                if not ingest(self, raw, attempt):
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
        _post(loop, a._on_call_end, self, attempt, code, details, retry_after)


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

    The API key is read from the environment variable named by ``provider.api_key_env``
    (``stale_after`` is not used: a quiet call is not a dead one). The options
    (:class:`~fairfeed.core.options.KaikoOptions`): the reconnect backoff (of the channel and
    of each call), ``rate_limit_pause``, ``keepalive_time`` / ``keepalive_timeout``;
    ``trades`` / ``quotes`` / ``derivatives`` choose the services; ``codes`` /
    ``amount_units`` the symbol table overrides; ``buffer_records`` bounds the records waiting
    for the loop; ``batch_delay``
    (seconds) is how long the loop lets records gather after the first one before it emits
    them (one wake-up per batch instead of one per message: the main CPU saving over a plain
    client; 0 = emit at once).
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
        self.symbols = KaikoSymbols.from_options(o)
        self.backoff = ctx.backoff(o.backoff_base, o.backoff_cap)  # the channel's
        self.rate_limit_pause = o.rate_limit_pause
        self.subscribe_timeout = o.subscribe_timeout
        self.batch_delay = o.batch_delay
        # Kaiko sends one event per message, a few hundred bytes: 16 MiB is far beyond any
        # legitimate one and bounds what one hostile message costs (grpc refuses it unread)
        self.max_message_bytes = p.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        # a metrics message may give METRIC_RECORDS records: the buffer holds at least that
        trades, quotes, buffer_records = o.trades, o.quotes, max(o.buffer_records, METRIC_RECORDS)
        self.channel_options = [
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            ("grpc.keepalive_time_ms", round(o.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", round(o.keepalive_timeout * 1000)),
            # grpc sends no keepalive ping while another ping (its BDP probe) is unanswered, and
            # waits a minute by default for that one: on a dead path keepalive would never fire
            ("grpc.http2.ping_timeout_ms", round(o.keepalive_timeout * 1000)),
            # a server-streaming client sends no data after its request: without this, grpc
            # stops pinging after two pings
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
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
                    _Call(self, f"{label}-trades", TRADES_METHOD, req, self.parser.parse_trade,
                          ctx.backoff(o.backoff_base, o.backoff_cap))
                )  # fmt: skip
            if quotes:
                req = StreamMarketUpdateRequestV1(
                    instrument_criteria=crit, commodities=[commodity_pb2.SMUC_TOP_OF_BOOK]
                )
                self.calls.append(
                    _Call(self, f"{label}-tob", MARKET_UPDATE_METHOD, req,
                          self.parser.parse_update, ctx.backoff(o.backoff_base, o.backoff_cap))
                )  # fmt: skip
        if o.derivatives:
            for key in self.parser.instruments:
                exchange, kclass, code = key
                if kclass not in _METRICS_CLASSES:
                    continue  # spot has no such metrics; options' (greeks) are not published
                # no `commodities`: Kaiko then sends both kinds, prices (mark, index) and risk
                # (funding, open interest)
                req = StreamDerivativesInstrumentMetricsRequestV1(
                    instrument_criteria=InstrumentCriteria(
                        exchange=exchange, instrument_class=kclass, code=code
                    )
                )
                self.calls.append(
                    _Call(self, f"{p.name}-{exchange}-{kclass}-{code}-metrics", METRICS_METHOD,
                          req, self.parser.metrics_parser(key),
                          ctx.backoff(o.backoff_base, o.backoff_cap), METRIC_RECORDS)
                )  # fmt: skip
        venues: dict[int, int] = {}
        for s in ctx.subscriptions:
            venues.setdefault(s.venue_id, s.class_code)
        # Trade ids of `gap_venues` are contiguous per instrument: a jump is a gap record, a
        # repeat is dropped; the last id per stream outlives calls, channels and the worker.
        reg = ctx.registry
        self._last_ids = ctx.last_ids or LastIds.local(len(reg.instruments), len(reg.sources))
        self._last_ids.ensure(len(reg.instruments), len(reg.sources))
        tracked = [s for s in ctx.subscriptions if s.venue in o.gap_venues]
        source_of_venue = np.full(max((s.venue_id for s in tracked), default=0) + 1, -1, np.int32)
        for s in tracked:
            source_of_venue[s.venue_id] = reg.source_id(s.provider, s.venue)
        self._tracker = SequenceTracker(source_of_venue, (KIND_TRADE,) if tracked else ())
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
        # the hot paths take the bare lock (`with self._lock`: C code) rather than the
        # condition (`with self._cond`: two Python calls per message); same lock, so waiting on
        # and notifying the condition inside them is as before
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel_now: grpc.Channel | None = None
        self._state: grpc.ChannelConnectivity | None = None  # of the current channel
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closed = False
        self._connected = False  # this channel sent STATUS_CONNECTED
        self.connections = 0  # channels that got every call answered (and one subscribed)
        self.subscribe_errors = 0
        self.rate_limits = 0
        self.call_restarts = 0  # calls restarted on their own (the channel stayed up)
        redact = ctx.redactor()
        self._parse_log = ErrorLog(log, f"{p.name}: malformed message", self.log_interval, redact)
        self._conn_log = ErrorLog(log, f"{p.name}: connection", self.log_interval, redact)
        self._gap_log = ErrorLog(log, f"{p.name}: gaps", self.log_interval, redact)

    # --- reader threads -> loop ------------------------------------------------------------

    def _ingest(self, c: _Call, raw: bytes, attempt: _Attempt) -> bool:
        """Reader thread: parse one message into the buffer; False once the attempt is over."""
        ts = time.time_ns()
        with self._lock:
            while self._n + c.max_records > self._cap:
                if not attempt.live:
                    return False
                self._cond.wait(0.1)
            if not attempt.live:
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
        with self._lock:
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
            # the loop owns `buf` until the next swap: the tracker may compact it in place
            n, bad_times, bad_values = check_plausible(buf[:n])
            if bad_times:
                c.add(Slot.TIME_ERRORS, bad_times)
            if bad_values:
                c.add(Slot.VALUE_ERRORS, bad_values)
            kept, gaps = self._tracker.check(buf[:n], self._last_ids.table)
            try:
                if kept:
                    self.ctx.emit(buf[:kept])
                if len(gaps):
                    c.add(Slot.GAPS, len(gaps))
                    lost = missed(gaps)
                    c.add(Slot.MISSED, lost)
                    self._gap_log(f"{len(gaps)} trade id gap(s), {lost} missed")
                    self.ctx.emit(gaps)
            except Exception:
                log.exception("%s: emit failed, %d records lost", self.ctx.provider.name, kept)
            c.add(Slot.RECORDS_IN, n)
            if kept < n:
                c.add(Slot.REPEATS_DROPPED, n - kept)
            if self.backoff.attempts:
                self.backoff.reset()  # this channel delivers data: the next failure starts over
        if frames:
            c.add(Slot.FRAMES_IN, frames)
        if errors:
            c.add(Slot.PARSE_ERRORS, errors)
        for error, frame in dead:
            self.ctx.dead_letter(error, frame)
        if dead_dropped:
            c.add(Slot.DEAD_LETTERS_DROPPED, dead_dropped)

    def _check_subscribed(self, now: float) -> None:
        """Loop: a call is subscribed once its response headers (or a record) arrived; the
        channel is connected once every call has an answer and one of them is subscribed."""
        for c in self.calls:
            if c.data and c.backoff.attempts:
                c.backoff.reset()  # this call delivers: its next end starts the schedule over
            if c.subscribed or c.end is not None:
                continue
            if c.data:
                c.subscribed = True
            elif _has_headers(c.attempt.call if c.attempt else None):
                # A refusal can also deliver (empty) headers, just before its status: a call
                # counts as subscribed when it is still open a moment after its headers.
                if not c.headers_at:
                    c.headers_at = now
                elif now - c.headers_at >= _HEADERS_SETTLE:
                    c.subscribed = True
        if (
            not self._connected
            and all(x.subscribed or x.refused for x in self.calls)
            and any(x.subscribed for x in self.calls)
        ):
            self._connected = True
            self.connections += 1
            self._mark_connected(True)
            self._status(STATUS_CONNECTED)
            log.info(
                "%s: subscribed %d calls on %s",
                self.ctx.provider.name,
                sum(x.subscribed for x in self.calls),
                self.target,
            )

    def _on_call_end(self, c: _Call, attempt: _Attempt, code, details: str, retry_after) -> None:
        attempt.ended.set()
        if attempt is c.attempt and attempt.live and c.end is None:
            c.end = (code, details, retry_after)
            c.ended_at = time.monotonic()
            self._wake.set()

    def _on_state(self, channel: grpc.Channel, state: grpc.ChannelConnectivity) -> None:
        if channel is self._channel_now:
            self._state = state
            if state in _DEAD_STATES:
                self._wake.set()

    # --- channel loop --------------------------------------------------------------------------

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
            await self._channel_once()
            if not self._stop.is_set():
                await self._pause()

    async def _channel_once(self) -> None:
        """One channel: every call on it, restarted one by one, until the channel is dead."""
        self._connected = False
        self._wake.clear()
        channel = self._channel()
        self._channel_now, self._state = channel, None
        loop = self._loop
        channel.subscribe(lambda st: _post(loop, self._on_state, channel, st), try_to_connect=False)
        for c in self.calls:
            c.refused = False
            c.start(channel, self._metadata)
        reason = ""
        try:
            reason = await self._watch(channel)
        finally:
            self._channel_now = None
            for c in self.calls:
                c.stop()
            await self._join()
            channel.close()
            self._drain()
            self._end_channel(reason)

    async def _watch(self, channel: grpc.Channel) -> str:
        """Restart what ends, one call at a time; return why the channel is dead."""
        start = time.monotonic()
        while True:
            now = time.monotonic()
            timeout = 0.25 if self._connected else 0.02
            for c in self.calls:  # wake for the next restart (or end to judge) that is due
                if c.end is not None:
                    due = c.restart_at or c.ended_at + _END_SETTLE
                    timeout = min(timeout, max(0.005, due - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stop.is_set():
                return ""
            now = time.monotonic()
            dead = self._channel_dead(now)
            if dead:
                return dead
            answered = any(c.subscribed or c.refused for c in self.calls)
            for c in self.calls:
                if c.end is not None and not c.restart_at and now - c.ended_at >= _END_SETTLE:
                    self._schedule_restart(c, now)
                elif (
                    c.end is None
                    and not c.subscribed
                    and answered
                    and now - c.started_at > self.subscribe_timeout
                ):
                    c.stop()  # this call alone is unanswered; the others are fine
                    c.end, c.ended_at = (_NO_ANSWER, "no answer to subscribe", None), now
            for c in self.calls:
                if c.restart_at and now >= c.restart_at:
                    self.call_restarts += 1
                    c.restarts += 1
                    self.ctx.counters.add(Slot.STREAM_RESTARTS)
                    c.start(channel, self._metadata)
            self._check_subscribed(now)
            if not answered and now - start > self.subscribe_timeout:
                return "no answer to subscribe"  # nothing on this channel answers at all

    def _channel_dead(self, now: float) -> str:
        """Why the channel is dead ('' while it is not): its connectivity says so, keepalive
        failed, or its calls end with UNAVAILABLE while it has no transport."""
        if self._state in _DEAD_STATES:
            return f"channel {self._state.name}"  # type: ignore[union-attr]
        ends = [c.end for c in self.calls]
        if all(e is not None and e[0] == grpc.StatusCode.UNAVAILABLE for e in ends):
            return f"every call UNAVAILABLE: {ends[0][1]}"  # type: ignore[index]
        for c in self.calls:
            if c.end is None or c.restart_at or c.end[0] != grpc.StatusCode.UNAVAILABLE:
                continue
            details = c.end[1]
            if "ping timeout" in details or "keepalive" in details.lower():
                return f"{c.name}: keepalive failed ({details})"
            # After a lost transport the channel is no longer READY; one call refused as
            # UNAVAILABLE on a working connection leaves it READY (that call restarts alone).
            if self._state is not grpc.ChannelConnectivity.READY and now - c.ended_at >= (
                _END_SETTLE
            ):
                return (
                    f"{c.name}: UNAVAILABLE {details} (channel {getattr(self._state, 'name', '?')})"
                )
        return ""

    def _schedule_restart(self, c: _Call, now: float) -> None:
        """Count and log how ``c`` ended; restart it after its own backoff delay."""
        code, details, retry_after = c.end  # type: ignore[misc]
        delay = c.backoff.next_delay()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (m := _TOO_LARGE.search(details)):
            # a message over max_message_bytes, refused unread: counted and dead-lettered
            # with its size like the WebSocket adapters' (no payload), not a rate limit
            counters = self.ctx.counters
            counters.add(Slot.OVERSIZED)
            counters.add(Slot.PARSE_ERRORS)
            error = f"message of {m[1]} bytes over max_message_bytes ({self.max_message_bytes})"
            self.ctx.dead_letter(error, b"", int(m[1]))
            self._conn_log(f"{c.name}: {error}; restarting this call")
            c.restart_at = now + delay
            return
        c.refused = code in SUBSCRIBE_REFUSALS and not c.data
        if c.refused:
            self.subscribe_errors += 1
            self.ctx.counters.add(Slot.SUBSCRIBE_ERRORS)
            self._status(STATUS_SUBSCRIBE_ERROR)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.rate_limits += 1
                delay = max(delay, self.rate_limit_pause, retry_after or 0.0)
            self._conn_log(f"{c.name}: subscription refused: {code.name} {details}")
        else:
            self._conn_log(f"{c.name}: {code.name} {details}; restarting this call")
        c.restart_at = now + delay

    async def _join(self) -> None:
        for c in self.calls:
            attempt = c.attempt
            if attempt is None or attempt.thread is None:
                continue
            if attempt.thread.is_alive():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(attempt.ended.wait(), 5.0)
            attempt.thread.join(timeout=1.0)

    def _end_channel(self, reason: str) -> None:
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def close(self) -> None:
        """Stop every call, flush what is buffered; no records are emitted afterwards."""
        self._stop.set()
        self._wake.set()
        for c in self.calls:
            c.stop()
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
