"""The connection machinery every WebSocket provider adapter shares.

A protocol subclass of :class:`WsAdapter` says *what* to send and how to read it (a parser, the
subscribe messages, what a control message means); this module does the rest, the same way for
every provider:

* **Connections.** The subscriptions are split over as many connections as the protocol's
  per-connection stream limit needs; each connection runs its own reconnect loop (a picows
  client: about 20x cheaper per frame than ``websockets``).
* **Batching.** Records parsed from every frame of one socket read are handed to ``ctx.emit``
  (and sequence-checked) once, when picows marks the read's last frame
  (``frame.last_in_buffer``). A read that brought data then makes the event loop sleep
  ``ctx.flush_delay`` (the worker's ``ring.flush_delay_ms``; :class:`ReadNap`, once per loop
  iteration): what arrives meanwhile waits in the kernel and comes in one read, so at a high
  rate of small frames the event loop's, the read's and the flush's costs are paid once per
  delay, not per frame. No record waits longer than the delay; ``ts_receive`` is the time of
  the read. Health records flush at once.
  A parser with ``parse_batch`` gets the read's whole data messages in one call (held until
  the read's last frame, any other frame, or a flush), and one by one only when they are not
  plain data throughout.
* **Reconnects** with capped, jittered backoff (:class:`~fairfeed.core.backoff.Backoff`, reset only
  once a subscription is acknowledged), re-subscription on every connect, subscribe requests
  staggered ``subscribe_interval`` apart (at least the provider's per-connection message
  spacing), a provider's rate-limit answer honoured (its delay, and the backoff keeps growing).
  New connections and subscribe / unsubscribe messages are paced across the whole daemon under
  the provider's declared per-IP limits (``limits``, :class:`~fairfeed.providers.base.Limits`;
  :mod:`fairfeed.ipc.pacer`).
* **Planned reconnects** (before a protocol's maximum connection age, or when the provider
  announces one) make before they break: a new session connects and subscribes next to the old
  one, and takes over once it is acknowledged and delivers; only then does the old one close
  (cleanly, so what it still sends is read). During the overlap numbered records already
  published are dropped (below). Records with a unique but unordered key (``overlap_key``:
  CoinAPI's trades, a hash of their uuid) are delivered by both sessions until the old one has
  ended, and the first arrival of each (instrument, venue, key) wins
  (:class:`~fairfeed.providers.overlap.OverlapFilter`): none lost, none twice. The new session's
  records with neither are dropped until it takes over, and the old one's last reads may repeat
  a few of them (quotes). A new session that does not come up within
  ``subscribe_timeout`` is given up, and the old one reconnects the plain way. No disconnect
  status is written for a switch.
* **Liveness.** Data and heartbeats are tracked apart. A connection that delivers neither data,
  heartbeats nor pings for ``stale_after`` is dead and is replaced; one that only heartbeats is
  alive but silent (a quiet market, or a provider that stopped sending: the anomaly detectors
  tell them apart from the heartbeat records). picows' idle pings catch a dead TCP path.
* **Health records** travel through the ring in order with the data (the rules are
  :class:`~fairfeed.providers.health.Health`'s, shared with Kaiko): KIND_STATUS on connect,
  disconnect and refused subscriptions, KIND_HEARTBEAT at most once per second per connection,
  and KIND_GAP when a sequenced venue skips numbers.
* **Sequences** (``gap_kinds``: a venue numbering per instrument across connections) are
  checked against the last id published per stream (instrument, source), a table that outlives
  connections (``ctx.last_ids``: in the daemon, shared memory that outlives the worker too). So
  the ids an unplanned reconnect or a worker restart missed are reported as one gap per stream,
  with the exact count, and a record numbered at or below what was published is dropped
  (Slot.REPEATS_DROPPED).
* **Back-pressure.** While the worker's ring is full it pauses reading (``pause_reading``: every
  connection's socket, and a connection opening meanwhile starts paused), pings included, so TCP
  pushes back on the provider; the pause is bounded by ``ring.block_timeout_ms``.
* **Bad input** never stops anything: a malformed frame is counted (Slot.PARSE_ERRORS), logged at
  a bounded rate and forwarded to the dead-letter channel with its error.
* **Oversized messages** (over ``max_message_bytes``: the provider's ``max_message_bytes``, or
  the protocol's default sized to its biggest legitimate message) are never held whole. A
  single frame is refused by picows' ``max_frame_size`` before its payload is buffered: picows
  closes the connection, which reconnects with backoff, and the dead letter carries the size
  picows read from the frame header (no payload: none was kept). A fragmented message stops
  growing at the limit: its first bytes are kept for the dead letter, the rest is read and
  dropped, and the connection carries on. Both are counted in Slot.OVERSIZED and
  Slot.PARSE_ERRORS and logged at a bounded rate.
* **Failures** of our own code or of the transport library (an exception in a picows callback,
  in connecting, or re-raised by picows when it ended a session) never leave the connection:
  it is closed and reconnected with backoff, the exception counted (Slot.ADAPTER_FAILURES) and
  logged with its traceback at a bounded rate. The adapter's other connections go on.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import logging
import re
import ssl
import termios
import time
import traceback
import weakref
from collections.abc import Sequence

import numpy as np
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    ws_connect,
)

from fairfeed.core.counters import Slot
from fairfeed.core.records import (
    RECORD_DTYPE,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.subscriptions import Subscription
from fairfeed.hotpath.plausible import check_plausible
from fairfeed.hotpath.sequence import UNKNOWN_MISSED, SequenceTracker, missed
from fairfeed.ipc.lastids import LastIds
from fairfeed.ipc.pacer import Pacer
from fairfeed.providers.base import Adapter, IngestContext
from fairfeed.providers.health import Health
from fairfeed.providers.overlap import OverlapFilter
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    ErrorLog,
    Parser,
    RecordParser,
)

log = logging.getLogger(__name__)

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_CONT = WSMsgType.CONTINUATION
_PING = WSMsgType.PING
_HEADROOM = 4  # records kept free after a flush threshold so one more small frame fits
# Bytes of an oversized message kept for its dead letter (the dead-letter topic keeps 64 KiB).
DEAD_LETTER_HEAD = 1 << 16
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# picows' MESSAGE_TOO_BIG text: "... exceeding max allowed size, <payload> > <limit>"
_TOO_BIG = re.compile(r"(\d+) > \d+")


class ReadNap:
    """The batching pause of one event loop: after an iteration whose socket reads brought
    data, the loop sleeps ``delay`` once (whichever connections read), so the next reads take
    all that arrived meanwhile; what arrives waits in the kernel's socket buffers.

    A sleep of the whole loop, not a pause of each socket's reading: the same bound on every
    record's wait, without the two ``epoll_ctl`` calls, the selector bookkeeping and the timer
    each read's pause and resume cost. Timers, pings and commands wait at most ``delay``.

    No sleep when a connection is behind (:meth:`behind`: its socket already holds more than
    one read takes): a loop that naps once per read would cap a flooded connection's rate at
    one read buffer per ``delay``.
    """

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReadNap] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.due = False  # a sleep is queued for the loop's next iteration
        self.skip = False  # a connection read this iteration is behind: no sleep
        self.naps = 0  # sleeps taken (tests)
        self.skipped = 0  # sleeps not taken because a connection was behind (tests)

    @classmethod
    def of_loop(cls, delay: float) -> ReadNap:
        """The running loop's nap (one per loop: two adapters must not sleep twice)."""
        loop = asyncio.get_running_loop()
        nap = cls._of_loop.get(loop)
        if nap is None or nap.delay != delay:
            nap = cls._of_loop[loop] = cls(loop, delay)
        return nap

    def request(self, fd: int = -1) -> None:
        """Sleep once the loop's current callbacks are done (at most once per iteration),
        unless the socket ``fd`` just read (or another's this iteration) is :meth:`behind`."""
        if fd >= 0 and not self.skip and self.behind(fd):
            self.skip = True
        if not self.due:
            self.due = True
            self.loop.call_soon(self._sleep)

    @staticmethod
    def behind(fd: int) -> bool:
        """Whether socket ``fd`` holds more unread bytes than :data:`BEHIND_BYTES`."""
        try:
            waiting = fcntl.ioctl(fd, termios.FIONREAD, _FIONREAD_ARG)
        except OSError:  # closed meanwhile: nothing to catch up on
            return False
        return int.from_bytes(waiting, "little") > BEHIND_BYTES

    def _sleep(self) -> None:
        self.due = False
        if self.skip:
            self.skip = False
            self.skipped += 1
            return
        self.naps += 1
        time.sleep(self.delay)


# A socket holding more than this after a read is behind (a read takes at most picows' read
# buffer, 64 KiB and up): the batching nap would only slow it down.
BEHIND_BYTES = 1 << 16
_FIONREAD_ARG = bytes(4)


class WsConnection:
    """One WebSocket connection of an adapter and the subscriptions it carries."""

    def __init__(
        self, adapter: WsAdapter, index: int, subs: tuple[Subscription, ...], route: str = ""
    ) -> None:
        self.adapter = adapter
        self.index = index
        self.subs = subs
        self.route = route  # which of the adapter's ``routes`` this connection serves
        self.name = f"{adapter.ctx.provider.name}#{index}" + (f"/{route}" if route else "")
        self.parser: Parser = adapter.make_parser(subs)
        self.buf = np.zeros(adapter.buffer_records, RECORD_DTYPE)
        self.u8 = self.buf.view(np.uint8)
        self.cap = adapter.buffer_records
        self.min_record_bytes = adapter.min_record_bytes
        self.n = 0  # records buffered
        self.ts = 0  # ts_receive of the current read burst (0 = none yet)
        self.frames = 0  # frames not yet counted
        # Whole data messages of this read not parsed yet (parsers with ``parse_batch``: one
        # decode per read); parsed before any other message and before every flush.
        self.pending: list[bytes] = []
        self.batch_records = getattr(self.parser, "batch_records", 0)
        self.pending_max = max(1, (self.cap - _HEADROOM) // max(1, self.batch_records))
        self.max_message_bytes = adapter.max_message_bytes
        self.frag: bytearray | None = None
        self.frag_size = 0  # bytes of the fragmented message so far (``frag`` stops at the limit)
        self.frag_peak = 0  # the largest ``frag`` ever held (tests: reassembly stays bounded)
        self.frag_binary = False  # the fragmented message is a binary one
        self.oversize_reported = False  # this session's too-big frame is counted already
        self.nap: ReadNap | None = None  # the loop's batching pause, found at the first read
        self.fd = -1  # the session's socket (whether it is behind, for the nap)
        # the parser's running totals already added to the counters
        self.parser_gaps = self.parser_missed = self.parser_heartbeats = 0
        self.gaps = SequenceTracker(adapter.sources_by_venue(subs), adapter.gap_kinds)
        self.backoff = adapter.ctx.backoff(adapter.backoff_base, adapter.backoff_cap)
        self.transport: WSTransport | None = None
        self.subscribed = False
        self.sent_subscriptions = False  # (no-ack protocols) all subscribe messages are out
        self.connects = 0  # connection attempts
        self.opened = 0  # successful handshakes
        self.opened_at = 0.0
        self.requested_at = 0.0  # every subscribe message sent (0 = not yet on this session)
        # removed while this session's (paced) subscribe messages were still going out: their
        # unsubscribe follows the last of them, or it would arrive first and be undone
        self.deferred_unsubscribe: tuple[Subscription, ...] = ()
        # Requests (subscribe, unsubscribe) go out one at a time, in order, request_spacing apart
        self.request_lock = asyncio.Lock()
        self.next_request = 0.0  # monotonic time the next request may go out on this connection
        self.last_data = 0.0  # monotonic time of the last data frame
        self.last_alive = 0.0  # last data, heartbeat or ping
        self.retry_after = 0.0  # the provider asked us to wait this long before reconnecting
        self.planned = ""  # reason of a planned reconnect (no backoff, not a failure)
        self.muted: np.ndarray | None = None  # (instrument << 16 | venue) keys dropped on flush
        self.closing = False  # removed (live unsubscribe, or replaced): do not reconnect
        self.closing_since = 0.0  # monotonic time our close frame went out (0: abort at once)
        # A planned switch: the new session of this connection, or the old one this replaces.
        self.successor: WsConnection | None = None
        self.predecessor: WsConnection | None = None
        self.switch_reason = ""
        # Keys both sessions of a switch publish (protocols with ``overlap_key``), until it ends.
        self.overlap: OverlapFilter | None = None
        self.task: asyncio.Task | None = None
        first = subs[0] if subs else None
        self.provider_id = first.provider_id if first else 0
        self.venue_id = first.venue_id if first else 0
        self.class_code = first.class_code if first else 0
        self.health = Health(
            adapter.ctx, self.name, self.provider_id, [self.venue_id], [self.class_code], self.flush
        )

    # -- called by the protocol --------------------------------------------------------------
    def send(self, payload: bytes | str) -> None:
        """Send one text message on the open connection (dropped if it is not open)."""
        t = self.transport
        if t is not None and not t.is_disconnected:
            t.send(_TEXT, payload.encode() if isinstance(payload, str) else payload)

    def acknowledge(self) -> None:
        """The provider confirmed our subscriptions: data may flow; reset the backoff."""
        if not self.subscribed:
            self.subscribed = True
            self.backoff.reset()
            self.status(STATUS_CONNECTED)
            log.info("%s: subscribed %d streams", self.name, len(self.subs))

    def refuse(self, reason: str, retry_after: float = 0.0) -> None:
        """The provider refused a subscription (rate limit, bad symbol...): reconnect later."""
        a = self.adapter
        a.subscribe_errors += 1
        a.ctx.counters.add(Slot.SUBSCRIBE_ERRORS)
        self.status(STATUS_SUBSCRIBE_ERROR)
        a.conn_log(f"{self.name}: subscription refused: {reason}")
        self.retry_after = max(self.retry_after, retry_after)
        self.disconnect()

    def reconnect_soon(self, reason: str) -> None:
        """A planned reconnect (provider notice, maximum connection age): a new session takes
        over before this one closes (:meth:`WsAdapter.switch`)."""
        if self.planned or self.successor is not None or self.predecessor is not None:
            return  # one switch at a time; a session not yet in charge is new anyway
        if self.closing or self.adapter.stopping.is_set():
            return
        log.info("%s: planned reconnect: %s", self.name, reason)
        self.adapter.switch(self, reason)

    def _fall_back(self, reason: str) -> None:
        """Reconnect the plain way (break before make, no backoff)."""
        self.planned = reason
        self.disconnect()

    def _take_over(self) -> None:
        """This new session is acknowledged and delivers: close the one it replaces."""
        old, self.predecessor = self.predecessor, None
        if old is None:
            return
        old.successor = None
        a = self.adapter
        if old in a.connections:
            a.connections.remove(old)
        log.info("%s: took over from %s (%s)", self.name, old.name, self.switch_reason)
        old.close_gracefully()

    def _give_up_switch(self) -> None:
        """This new session failed before taking over: drop it, the old one reconnects."""
        old, self.predecessor = self.predecessor, None
        self.closing = True
        self._leave_overlap()  # it may never have connected
        a = self.adapter
        if self in a.connections:
            a.connections.remove(self)
        if old is None:
            return
        old.successor = None
        log.warning("%s: new session did not come up; %s reconnects instead (%s)",
                    self.name, old.name, self.switch_reason)  # fmt: skip
        old._fall_back(self.switch_reason)

    def close_gracefully(self) -> None:
        """Send a close frame and keep reading until the server's answer ends the session
        (the watchdog aborts it after ``close_timeout``): what the server sent before is kept."""
        self.closing = True
        self.closing_since = time.monotonic()
        t = self.transport
        if t is None or t.is_disconnected:
            return
        try:
            t.send_close(WSCloseCode.OK)
        except Exception:
            t.disconnect()

    def disconnect(self) -> None:
        t = self.transport
        if t is not None:
            t.disconnect()

    # -- back-pressure (the worker's ring is full) -------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading the socket (frames already read are still delivered)."""
        t = self.transport
        if t is not None and not t.is_disconnected:
            t.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_disconnected:
            t.underlying_transport.resume_reading()

    # -- records -----------------------------------------------------------------------------
    def status(self, code: int) -> None:
        self.health.status(code)

    def flush(self) -> None:
        """Hand the buffered burst to the ring (gap records first checked and appended)."""
        if self.pending:
            self._parse_pending()
        n = self.n
        a = self.adapter
        c = a.ctx.counters
        if n:
            self.n = 0
            batch = self.buf[:n]
            if self.muted is not None:  # unsubscribed streams still in flight on this connection
                keep = ~np.isin(_stream_keys(batch), self.muted)
                batch = batch[keep]
            if self.predecessor is not None:
                # A new session not yet in charge: the old one still delivers what carries no
                # number or key; numbered records are sorted out by the tracker below, keyed
                # ones by the overlap filter.
                numbered = self.gaps.tracked[batch["kind"]] != 0
                if a.overlap_key is not None:
                    numbered |= batch[a.overlap_key] != 0
                c.add(Slot.REPEATS_DROPPED, len(batch) - int(numbered.sum()))
                batch = batch[numbered]
            ov = self.overlap
            if ov is not None:
                if ov.ended:  # the other session ended the switch
                    self.overlap = None
                else:
                    before = len(batch)
                    batch = ov.filter(batch)
                    c.add(Slot.REPEATS_DROPPED, before - len(batch))
            good, bad_times, bad_values = check_plausible(batch)
            if bad_times:
                c.add(Slot.TIME_ERRORS, bad_times)
                a.parse_log(f"{self.name}: {bad_times} record(s) with an implausible venue time "
                            "(over a day ahead of ours, or before 2010): cleared")  # fmt: skip
            if bad_values:
                batch = batch[:good]
                c.add(Slot.VALUE_ERRORS, bad_values)
                a.parse_log(f"{self.name}: {bad_values} record(s) with a price or size beyond "
                            "any market (fairfeed/hotpath/plausible.py): dropped")  # fmt: skip
            kept, gaps = self.gaps.check(batch, a.last_ids.table)
            if kept < len(batch):
                c.add(Slot.REPEATS_DROPPED, len(batch) - kept)
                batch = batch[:kept]
            try:
                if kept:
                    a.ctx.emit(batch)
                if len(gaps):
                    c.add(Slot.GAPS, len(gaps))
                    lost = missed(gaps)
                    c.add(Slot.MISSED, lost)
                    a.gap_log(f"{self.name}: {len(gaps)} sequence gap(s), {lost} messages missed"
                              + _unknown(gaps))  # fmt: skip
                    a.ctx.emit(gaps)
            except Exception:
                log.exception("%s: emit failed, %d records lost", self.name, n)
            c.add(Slot.RECORDS_IN, n)
            if self.predecessor is not None and self.subscribed:
                self._take_over()
        if self.frames:
            c.add(Slot.FRAMES_IN, self.frames)
            self.frames = 0
        # Health records the parser wrote itself: its running totals (the parser protocol).
        parser = self.parser
        ph = parser.heartbeats
        if ph != self.parser_heartbeats:
            c.add(Slot.HEARTBEATS, ph - self.parser_heartbeats)
            self.parser_heartbeats = ph
        pg = parser.gaps
        if pg != self.parser_gaps:
            pm = parser.missed
            c.add(Slot.GAPS, pg - self.parser_gaps)
            c.add(Slot.MISSED, pm - self.parser_missed)
            a.gap_log(f"{self.name}: {pg - self.parser_gaps} sequence gap(s), "
                      f"{pm - self.parser_missed} messages missed")  # fmt: skip
            self.parser_gaps, self.parser_missed = pg, pm
        self.ts = 0

    # -- frames ------------------------------------------------------------------------------
    def on_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if (mt is _TEXT or mt is _BINARY) and frame.fin and self.frag is None:
            if frame.payload_size > self.max_message_bytes:  # picows let one through
                self._refuse_frame(transport, frame.get_payload_as_memoryview())
                return
            if mt is _BINARY:
                self._binary(frame.get_payload_as_memoryview(), frame.last_in_buffer)
                return
            if self.batch_records:  # parsed with the read's others (or before a flush)
                if not self.ts:
                    self.ts = time.time_ns()
                pending = self.pending
                pending.append(frame.get_payload_as_bytes())
                if len(pending) >= self.pending_max:
                    self._parse_pending()
                if frame.last_in_buffer:
                    self._read_done()
                return
            payload = frame.get_payload_as_memoryview()
        elif mt is _PING:
            transport.send_pong(frame.get_payload_as_bytes())
            self.last_alive = time.monotonic()
            return
        elif mt is _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            self.flush()
            return
        elif mt is _TEXT or mt is _BINARY or mt is _CONT:
            payload = self._fragment(frame)
            if payload is None or self.frag_binary:
                if payload is not None:
                    self._binary(payload, False)
                if frame.last_in_buffer:
                    self._read_done()
                return
        else:  # pong
            self.last_alive = time.monotonic()
            return
        if self.pending:  # the read's earlier messages first: records stay in order
            self._parse_pending()
        self._parse_one(payload)
        if frame.last_in_buffer:
            self._read_done()

    def _parse_one(self, payload: bytes | memoryview) -> None:
        """Parse one whole message into the buffer (flushed first if it may not fit)."""
        if not self.ts:
            self.ts = time.time_ns()
        n = self.n
        if n and n + len(payload) // self.min_record_bytes + _HEADROOM > self.cap:
            ts = self.ts
            self.last_data = self.last_alive = time.monotonic()
            self.flush()
            self.ts = ts  # the same read goes on
            n = 0
        r = self.parser.parse(payload, self.buf, n, self.ts)
        self.frames += 1
        if r > 0:
            self.n = n + r  # last_data: at the end of the read (one clock call per read)
            if not self.subscribed and self.sent_subscriptions:
                self.acknowledge()
        elif r < 0:
            self._special(r, payload)

    def _parse_pending(self) -> None:
        """Parse the whole data messages held back so far: in one call when they are plain
        data throughout, else one by one (control messages, malformed ones...)."""
        pending, self.pending = self.pending, []  # taken first: a flush below finds it empty
        n = self.n
        ts = self.ts
        if n and n + len(pending) * self.batch_records + _HEADROOM > self.cap:
            self.last_data = self.last_alive = time.monotonic()
            self.flush()
            self.ts = ts
            n = 0
        r = self.parser.parse_batch(pending, self.buf, n, ts)
        if r >= 0:
            self.frames += len(pending)
            if r:
                self.n = n + r
                if not self.subscribed and self.sent_subscriptions:
                    self.acknowledge()
            return
        for payload in pending:
            self._parse_one(payload)

    def _read_done(self) -> None:
        """The socket read's last frame: publish what it brought, then, if it brought data,
        have the event loop sleep ``flush_delay`` so that the next reads take all that arrived
        meanwhile (the loop's, the read's and the flush's costs paid once per batch)."""
        if self.pending:
            self._parse_pending()
        had_data = self.n or self.frames
        if self.n:
            self.last_data = self.last_alive = time.monotonic()
        self.flush()
        if had_data and self.adapter.ctx.flush_delay > 0:
            nap = self.nap
            if nap is None:
                nap = self.nap = ReadNap.of_loop(self.adapter.ctx.flush_delay)
            nap.request(self.fd)

    def _binary(self, payload: bytes | memoryview, last_in_buffer: bool) -> None:
        """Every provider we read speaks JSON text: a binary message is not data, even if it
        holds JSON (a proxy or a broken server), so it is refused like a malformed one."""
        self.frames += 1
        self.adapter.malformed(self, "a binary message: the protocol sends text", bytes(payload))
        if last_in_buffer:
            self._read_done()

    def _special(self, r: int, payload: bytes | memoryview) -> None:
        a = self.adapter
        if r == HEARTBEAT:
            now = time.monotonic()
            self.last_alive = now
            if not self.subscribed and self.sent_subscriptions:
                self.acknowledge()
            self.health.heartbeat(now)
        elif r == CONTROL:
            self.last_alive = time.monotonic()
            a.on_control(self, self.parser.control)
        elif r == PARSE_ERROR:
            a.malformed(self, self.parser.error, bytes(payload))
        elif r == NEED_SPACE:  # one message bigger than the whole buffer
            self.flush()
            big = np.zeros(self.parser.needed, RECORD_DTYPE)
            n = self.parser.parse(payload, big, 0, self.ts or time.time_ns())
            if n > 0:
                self.last_data = self.last_alive = time.monotonic()
                a.ctx.emit(big[:n])
                a.ctx.counters.add(Slot.RECORDS_IN, n)
            elif n == PARSE_ERROR:
                a.malformed(self, self.parser.error, bytes(payload))

    def _fragment(self, frame: WSFrame) -> bytes | None:
        """Reassemble a fragmented message; the whole payload once its last part arrived.

        The buffer never grows past ``max_message_bytes``: once a message is over it, only its
        head is kept (for the dead letter) and the rest is counted and dropped as it comes.
        """
        if frame.msg_type is not _CONT:
            self.frag = bytearray()
            self.frag_size = 0
            self.frag_binary = frame.msg_type is _BINARY
        elif self.frag is None:  # a continuation without a start: ignore it
            return None
        part = frame.get_payload_as_memoryview()
        limit = self.adapter.max_message_bytes
        self.frag_size += len(part)
        if self.frag_size <= limit:
            self.frag += part
            self.frag_peak = max(self.frag_peak, len(self.frag))
        elif len(self.frag) > DEAD_LETTER_HEAD:  # just went over: free all but the head
            self.frag = self.frag[:DEAD_LETTER_HEAD]
        elif len(self.frag) < DEAD_LETTER_HEAD:
            self.frag += part[: DEAD_LETTER_HEAD - len(self.frag)]
        if not frame.fin:
            return None
        frag, size, self.frag = self.frag, self.frag_size, None
        if size > limit:
            self.adapter.oversized(self, bytes(frag[:DEAD_LETTER_HEAD]), size)
            return None
        return bytes(frag)

    # -- lifecycle ---------------------------------------------------------------------------
    def on_connected(self, transport: WSTransport) -> None:
        now = time.monotonic()
        self.transport = transport
        sock = transport.underlying_transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.frag = None
        self.oversize_reported = False
        self.subscribed = False
        self.sent_subscriptions = False
        self.planned = ""
        self.retry_after = 0.0
        self.opened_at = self.last_alive = self.last_data = now
        self.requested_at = 0.0
        self.deferred_unsubscribe = ()  # this session subscribes the current set
        if self.muted is not None:
            # A new session subscribes to ``subs`` only: nothing unsubscribed can arrive any
            # more, so stop filtering every batch (after the old session's buffered data).
            self.flush()
            self.muted = None
        self.parser.reset()  # per-connection numbering; per-stream ids live in last_ids
        self.opened += 1
        self.health.connected(True)

    def on_disconnected(self) -> None:
        self.flush()
        self.transport = None
        self.fd = -1
        self.health.connected(False)
        self._leave_overlap()

    def _leave_overlap(self) -> None:
        """This session ended: with one left, the switch's overlap is over."""
        if self.overlap is not None:
            self.overlap.leave()
            self.overlap = None

    async def run(self) -> None:
        """Connect, subscribe and stream until the adapter closes; reconnect on any failure.

        Whatever escapes a session's own handling (a bug of ours, or of a library) is counted
        and logged, and the connection starts over after a backoff: an exception leaving this
        task would end the adapter, the worker and every connection it holds.
        """
        a = self.adapter
        while True:
            try:
                await self._run()
                return
            except Exception as exc:
                a.failed(self, "in its run loop", exc)
                if self.transport is not None:
                    with contextlib.suppress(Exception):
                        self.transport.disconnect()
                if a.stopping.is_set() or self.closing:
                    return
                await a.pause(self.backoff.next_delay())

    async def _run(self) -> None:
        a = self.adapter
        ctx = a.ctx
        while not a.stopping.is_set() and not self.closing:
            if self.connects:
                ctx.counters.add(Slot.RECONNECTS)
            self.connects += 1
            url = a.url_for(self)
            await a.pace("connect")
            if a.stopping.is_set():
                break
            try:
                transport, _ = await ws_connect(
                    lambda: _Listener(self),
                    url,
                    ssl_context=a.ssl_context(url),
                    websocket_handshake_timeout=a.handshake_timeout,
                    enable_auto_ping=True,
                    auto_ping_idle_timeout=max(1.0, a.stale_after / 2),
                    auto_ping_reply_timeout=max(1.0, a.stale_after / 2),
                    enable_auto_pong=False,
                    extra_headers=a.extra_headers(),
                    # refused from the frame header, before picows buffers the payload
                    max_frame_size=a.max_message_bytes,
                    logger_name=_PicowsLog(self),
                )
            except Exception as exc:
                if isinstance(exc, TimeoutError | OSError | WSError):
                    a.conn_log(f"{self.name}: cannot connect to {url}: {exc!r}")
                else:  # not a network failure: ours or picows'; it must not end the worker
                    a.failed(self, f"connecting to {url}", exc)
                if self.predecessor is not None:
                    self._give_up_switch()
                    break
                await a.pause(self.backoff.next_delay())
                continue
            sender = asyncio.create_task(self._subscribe())
            try:
                await self._watch(transport)
            except WSProtocolError as exc:  # picows ended the session, e.g. a frame too big
                self._protocol_error(exc)
            except Exception as exc:  # re-raised by picows from one of our callbacks, or ours
                a.failed(self, "streaming", exc)
            finally:
                sender.cancel()
                transport.disconnect()
                self.on_disconnected()
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                log.error("%s: subscribing failed", self.name, exc_info=sender.exception())
            if a.stopping.is_set() or self.closing:
                break
            if self.predecessor is not None:  # a new session that ended before taking over
                self._give_up_switch()
                break
            if self.successor is not None:
                # Lost while its replacement comes up: the new session carries on; what fell
                # between the two is reported by the sequence check.
                a.conn_log(f"{self.name}: closed during a planned switch to "
                           f"{self.successor.name}")  # fmt: skip
                self.successor.predecessor = None
                self.successor = None
                self.closing = True
                if self in a.connections:
                    a.connections.remove(self)
                break
            self.status(STATUS_DISCONNECTED)
            if self.planned:
                continue  # planned: reconnect at once, the backoff is not touched
            ctx.counters.add(Slot.DISCONNECTS)
            a.conn_log(f"{self.name}: disconnected from {url}")
            await a.pause(max(self.retry_after, self.backoff.next_delay()))

    def _refuse_frame(self, transport: WSTransport, payload: memoryview) -> None:
        """A whole frame over the limit reached us (picows refuses it from its header, but
        reads on for a moment before it disconnects): drop it, dead-letter its head, close."""
        self.oversize_reported = True
        self.adapter.oversized(self, bytes(payload[:DEAD_LETTER_HEAD]), len(payload))
        transport.disconnect()

    def too_big(self) -> None:
        """picows just refused a frame from its header and disconnects in a moment: stop
        reading now, or it goes on buffering the frame meanwhile."""
        self.pause_reading()

    def _protocol_error(self, exc: WSProtocolError) -> None:
        """picows closed the session on a protocol error: an oversized frame is counted and
        dead-lettered (its size from picows' message; the payload was never read)."""
        a = self.adapter
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        if exc.code != WSCloseCode.MESSAGE_TOO_BIG:
            a.conn_log(f"{self.name}: protocol error from the provider: {text}")
            return
        if self.oversize_reported:  # its payload reached on_frame and was counted there
            return
        m = _TOO_BIG.search(text)
        a.oversized(self, b"", int(m.group(1)) if m else a.max_message_bytes + 1)

    async def send_requests(self, msgs: Sequence[bytes | str],
                            transport: WSTransport | None = None) -> None:  # fmt: skip
        """Send ``msgs`` in order, each under the provider's per-IP message limit (a slot shared
        with every worker) and at least ``request_spacing`` after this connection's previous
        request. ``transport``: only on that session (a later one has its own subscriptions)."""
        a = self.adapter
        async with self.request_lock:
            for msg in msgs:
                if transport is not None and self.transport is not transport:
                    return
                wait = self.next_request - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await a.pace("message")
                if transport is not None and self.transport is not transport:
                    return
                self.send(msg)
                self.next_request = time.monotonic() + a.request_spacing

    async def _subscribe(self) -> None:
        """Send the protocol's subscribe messages (:meth:`send_requests`)."""
        a = self.adapter
        await self.send_requests(a.subscribe_messages(self, self.subs))
        self.requested_at = time.monotonic()
        if self.deferred_unsubscribe:
            gone, self.deferred_unsubscribe = self.deferred_unsubscribe, ()
            await self.send_requests(a.unsubscribe_messages(self, gone))
        # Without explicit acks, the first data or heartbeat afterwards acknowledges: an error
        # answer then never resets the backoff.
        self.sent_subscriptions = not a.acknowledges_subscriptions

    async def _watch(self, transport: WSTransport) -> None:
        """Return when the connection ends; end it when it is dead or too old."""
        a = self.adapter
        done = asyncio.ensure_future(transport.wait_disconnected())
        tick = min(0.5, a.stale_after / 4, a.subscribe_timeout / 4)
        try:
            while not done.done():
                await asyncio.wait([done], timeout=tick)
                if done.done():
                    break
                now = time.monotonic()
                if a.stopping.is_set():
                    with contextlib.suppress(Exception):
                        transport.send_close(WSCloseCode.OK)
                    transport.disconnect()
                elif self.closing:
                    if now - self.closing_since > a.close_timeout:
                        transport.disconnect()
                elif (not self.subscribed and self.requested_at
                      and now - self.requested_at > a.subscribe_timeout):  # fmt: skip
                    a.conn_log(f"{self.name}: subscription not acknowledged, reconnecting")
                    transport.disconnect()
                elif self.requested_at and Health.stale(
                    now, max(self.last_alive, self.requested_at), a.stale_after
                ):  # (not while our own pacing holds the subscribe messages back)
                    a.conn_log(
                        f"{self.name}: no data, heartbeat or ping for "
                        f"{now - self.last_alive:.1f}s, reconnecting"
                    )
                    transport.disconnect()
                elif self.predecessor is not None and now - self.opened_at > a.subscribe_timeout:
                    self._take_over()  # acknowledged, but its streams are quiet: nothing to lose
                elif a.max_connection_age and now - self.opened_at > a.max_connection_age:
                    self.reconnect_soon(f"connection older than {a.max_connection_age:g}s")
            await done
        finally:
            done.cancel()


def _unknown(gaps: np.ndarray) -> str:
    """The log's word on implausible jumps among ``gaps`` (gaps of unknown size)."""
    n = int((gaps["size"] == UNKNOWN_MISSED).sum())
    return f" ({n} implausible jump(s): size unknown, tracking restarted)" if n else ""


def _stream_keys(records: np.ndarray) -> np.ndarray:
    return (records["instrument"].astype(np.int64) << 16) | records["venue"]


def _sub_keys(subs: Sequence[Subscription]) -> np.ndarray:
    return np.array([(s.instrument_id << 16) | s.venue_id for s in subs], np.int64)


class _PicowsLog(logging.LoggerAdapter):
    """picows' logger for one connection, and the one synchronous hook picows offers when it
    refuses a frame over ``max_frame_size``: it only logs the error, then keeps reading for
    10 ms before it disconnects, long enough on a fast link to buffer the whole frame."""

    def __init__(self, conn: WsConnection) -> None:
        super().__init__(logging.getLogger("picows.client"), {})
        self.conn = conn

    def error(self, msg: object, *args: object, **kwargs: object) -> None:
        info = args[0] if args else None
        if isinstance(info, tuple) and info and info[0] == WSCloseCode.MESSAGE_TOO_BIG:
            self.conn.too_big()
        super().error(msg, *args, **kwargs)  # type: ignore[arg-type]


class _Listener(WSListener):
    def __init__(self, conn: WsConnection) -> None:
        super().__init__()
        self.conn = conn

    # An exception must not reach picows: it would close the session itself and re-raise the
    # exception from ``wait_disconnected``. Each callback reports it and closes the session;
    # the connection's run loop reconnects with backoff.
    def on_ws_connected(self, transport: WSTransport) -> None:
        try:
            self.conn.on_connected(transport)
            if self.conn.adapter.reading_paused:  # opened while the worker's ring is full
                self.conn.pause_reading()
            self.conn.adapter.on_open(self.conn)
        except Exception as exc:
            self._fail(transport, "on connect", exc)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        try:
            self.conn.flush()
        except Exception as exc:
            self._fail(transport, "on disconnect", exc)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if not self.conn.adapter.closed:
            try:
                self.conn.on_frame(transport, frame)
            except Exception as exc:
                self._fail(transport, "handling a frame", exc)

    def _fail(self, transport: WSTransport, what: str, exc: Exception) -> None:
        self.conn.frag = None  # a half-reassembled message is lost with the session
        self.conn.adapter.failed(self.conn, what, exc)
        with contextlib.suppress(Exception):
            transport.disconnect()


class WsAdapter(Adapter):
    """Base of every WebSocket provider adapter; subclasses implement the protocol hooks.

    Parsers follow :class:`~fairfeed.providers.parsing.Parser`; by default one is built with
    ``parser_class.for_subscriptions(subs, **parser_variant())``. Gaps: either the base tracks
    them (``gap_kinds``: numbering contiguous per instrument), or the parser does (numbering per
    connection or per venue symbol): it then writes KIND_GAP records itself and its running
    totals ``gaps`` / ``missed`` (and ``heartbeats`` for heartbeat records it writes) are
    counted by the base. The base calls the parser's ``reset()`` on every connect.
    """

    # Protocol constants and defaults; the provider's configuration overrides the ones it names
    # (stale_after, max_streams_per_connection, subscribe_batch, max_connection_age) and its
    # options (fairfeed/core/options.py) set the backoff, subscribe timeout and rate-limit pause.
    max_streams_per_connection = 1024
    # Protocol streams one subscription takes (Binance, Kraken: 2). The one rule for how many
    # subscriptions fit a connection, at start and on a live add: subscriptions_per_connection.
    streams_per_subscription = 1
    # Endpoints a subscription's streams are split across (Binance USD-M: book tickers on one,
    # trades on another): every group of subscriptions gets one connection per route.
    routes: tuple[str, ...] = ("",)
    subscribe_batch = 100  # streams per subscribe message
    stale_after = 30.0
    max_connection_age = 0.0  # seconds; 0 = no planned reconnect
    acknowledges_subscriptions = True  # False: consider subscribed once the requests are sent
    handshake_timeout = 10.0
    close_timeout = 2.0  # seconds a replaced session may take to answer our close frame
    gap_kinds: tuple[int, ...] = ()  # record kinds whose `sequence` is contiguous per instrument
    # A record field holding a key unique per stream but not ordered (0 = none): during a
    # planned switch both sessions deliver such records, the first arrival of each key wins.
    overlap_key: str | None = None
    min_record_bytes = 30  # wire bytes per record at least (sizes the flush-before-parse check)
    # The largest message accepted (bytes; the provider's max_message_bytes overrides it). The
    # default fits any single update of an exchange feed many times over; a protocol whose
    # legitimate messages are bigger (snapshots) raises it.
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    buffer_records = 8192
    log_interval = 1.0

    def __init__(self, ctx: IngestContext) -> None:
        super().__init__(ctx)
        p = ctx.provider
        o = self.options
        self.backoff_base, self.backoff_cap = o.backoff_base, o.backoff_cap
        self.subscribe_timeout = o.subscribe_timeout
        self.rate_limit_pause = o.rate_limit_pause  # least wait after a rate-limit refusal
        if p.stale_after:
            self.stale_after = p.stale_after
        if p.max_streams_per_connection:
            self.max_streams_per_connection = p.max_streams_per_connection
        if p.subscribe_batch:
            self.subscribe_batch = p.subscribe_batch
        if p.max_connection_age:
            self.max_connection_age = p.max_connection_age
        if p.max_message_bytes:
            self.max_message_bytes = p.max_message_bytes
        self.subscribe_interval = p.subscribe_interval
        per_conn = self.limits.connection_messages
        # A connection's requests: subscribe_interval apart, never closer than its limit allows
        self.request_spacing = max(self.subscribe_interval, per_conn.interval if per_conn else 0.0)
        self.stopping = asyncio.Event()
        self.closed = False
        self.subscribe_errors = 0
        redact = ctx.redactor()
        self.conn_log = ErrorLog(log, f"{p.name}: connection", self.log_interval, redact)
        self.parse_log = ErrorLog(log, f"{p.name}: malformed message", self.log_interval, redact)
        self.gap_log = ErrorLog(log, f"{p.name}: gaps", self.log_interval, redact)
        self.failure_log = ErrorLog(log, f"{p.name}: connection failure", self.log_interval, redact)
        reg = ctx.registry
        self.last_ids = ctx.last_ids or LastIds.local(len(reg.instruments), len(reg.sources))
        self.pacer = ctx.pacer or Pacer.local([p.name])
        step = self.subscriptions_per_connection
        subs = ctx.subscriptions
        groups = [(subs[k : k + step], r) for k in range(0, len(subs), step) for r in self.routes]
        self.connections = [WsConnection(self, i, g, r) for i, (g, r) in enumerate(groups)]
        self._running = False
        self._tasks: list[asyncio.Task] = []
        self._senders: set[asyncio.Task] = set()  # unsubscribe requests going out

    @property
    def subscriptions_per_connection(self) -> int:
        """How many subscriptions one connection carries within the stream limit."""
        return max(1, self.max_streams_per_connection // self.streams_per_subscription)

    parser_class: type[RecordParser]

    # -- protocol hooks ----------------------------------------------------------------------
    def make_parser(self, subs: tuple[Subscription, ...]) -> Parser:
        """A parser for one connection carrying ``subs``."""
        return self.parser_class.for_subscriptions(subs, **self.parser_variant())

    def parser_variant(self) -> dict[str, object]:
        """The protocol switches the parser is built with (default: none)."""
        return {}

    @abc.abstractmethod
    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        """The messages to send after connecting (batched by ``subscribe_batch``)."""

    def on_control(self, conn: WsConnection, msg: object) -> None:
        """A control message the parser recognized (acks, errors, notices). Default: ignore."""

    def on_open(self, conn: WsConnection) -> None:
        """Called when the WebSocket handshake completed, before subscribing."""

    def url_for(self, conn: WsConnection) -> str:
        """The endpoint of ``conn`` (some protocols put its route or its streams in it)."""
        return self.ctx.url

    def extra_headers(self) -> dict[str, str] | None:
        return None

    def ssl_context(self, url: str) -> ssl.SSLContext | None:
        return ssl.create_default_context() if url.startswith("wss:") else None

    # -- shared behaviour --------------------------------------------------------------------
    def sources_by_venue(self, subs: Sequence[Subscription]) -> np.ndarray:
        """``table[venue id]`` = source id of ``subs``' (provider, venue), -1 elsewhere; makes
        room for them in the last-id table."""
        reg = self.ctx.registry
        table = np.full(max((s.venue_id for s in subs), default=0) + 1, -1, np.int32)
        for s in subs:
            table[s.venue_id] = reg.source_id(s.provider, s.venue)
        self.last_ids.ensure(len(reg.instruments), len(reg.sources))
        return table

    def switch(self, old: WsConnection, reason: str) -> None:
        """Open a new session for ``old``'s subscriptions; it takes over once it delivers."""
        new = WsConnection(self, self._next_index(), old.subs, old.route)
        new.predecessor, new.switch_reason = old, reason
        old.successor = new
        if self.overlap_key is not None:
            ov = old.overlap  # the previous switch's old session may still be closing: share
            if ov is None or ov.ended:
                ov = old.overlap = OverlapFilter(self.overlap_key)
                ov.join()
            new.overlap = ov
            ov.join()
        self.connections.append(new)
        self.ctx.counters.add(Slot.RECONNECTS)
        if self._running:
            new.task = asyncio.create_task(new.run())
            self._tasks.append(new.task)

    @staticmethod
    def batches(items: Sequence, size: int) -> list:
        """``items`` cut into lists of at most ``size``."""
        return [list(items[i : i + size]) for i in range(0, len(items), max(1, size))]

    def malformed(self, conn: WsConnection, error: str, frame: bytes) -> None:
        """Count, log (bounded) and dead-letter one malformed message."""
        self.ctx.counters.add(Slot.PARSE_ERRORS)
        self.parse_log(f"{conn.name}: {error}", frame)
        self.ctx.dead_letter(error, frame)

    def oversized(self, conn: WsConnection, head: bytes, size: int) -> None:
        """Count, log (bounded) and dead-letter one message over ``max_message_bytes``:
        ``head`` is what was kept of it (possibly nothing), ``size`` its real size."""
        c = self.ctx.counters
        c.add(Slot.OVERSIZED)
        c.add(Slot.PARSE_ERRORS)
        error = f"message of {size} bytes over max_message_bytes ({self.max_message_bytes})"
        self.parse_log(f"{conn.name}: {error}", head)
        self.ctx.dead_letter(error, head, size)

    def failed(self, conn: WsConnection, what: str, exc: BaseException) -> None:
        """An unexpected exception on ``conn`` (the caller closes it; it reconnects with
        backoff): counted, and logged with its traceback at a bounded rate."""
        self.ctx.counters.add(Slot.ADAPTER_FAILURES)
        if self.failure_log(f"{conn.name}: {what}: {exc!r}; reconnecting"):
            tb = "".join(traceback.format_exception(exc))  # redacted: it may quote a frame
            log.warning("%s: traceback of the failure %s:\n%s", conn.name, what,
                        self.failure_log.redact(tb))  # fmt: skip

    def pause_reading(self) -> None:
        """Stop reading every connection's socket (the worker's ring is full)."""
        super().pause_reading()
        for c in self.connections:
            c.pause_reading()

    def resume_reading(self) -> None:
        super().resume_reading()
        for c in self.connections:
            c.resume_reading()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the adapter is closed meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def pace(self, action: str) -> None:
        """Wait for this provider's next ``action`` slot ("connect", "message") under its
        declared per-IP limit (``limits``), shared with every worker of the daemon."""
        rate = self.limits.connect if action == "connect" else self.limits.message
        if rate is None:
            return
        interval, burst = rate.interval, rate.burst
        # Woken late (the loop was busy), so were the others waiting for the slots after this
        # one, and all would go at once: beyond this lateness a fresh slot spaces them out
        # again. A limit with a burst absorbs half a burst of such bunching (Binance: 10 s of
        # a busy loop after 20 connections opened at once, instead of re-queueing each late
        # connection behind the others, ~1 s further every time).
        late_ok = max(interval / 2, (burst - 1) * interval / 2)
        for _ in range(3):
            now = time.monotonic()
            at = self.pacer.reserve(self.ctx.provider.name, action, interval, now, burst)
            if at > now:
                await self.pause(at - now)
            if self.stopping.is_set() or time.monotonic() - at <= late_ok:
                return

    # -- live subscription changes -----------------------------------------------------------
    live_changes = True

    def add(self, subs: tuple[Subscription, ...]) -> None:
        """Stream ``subs`` on new connections: the open ones (and their streams) are untouched."""
        have = {(s.venue, s.instrument) for c in self.connections for s in c.subs}
        new = tuple(s for s in subs if (s.venue, s.instrument) not in have)
        step = self.subscriptions_per_connection
        for k in range(0, len(new), step):
            for route in self.routes:
                conn = WsConnection(self, self._next_index(), new[k : k + step], route)
                self.connections.append(conn)
                if self._running:
                    conn.task = asyncio.create_task(conn.run())
                    self._tasks.append(conn.task)

    def remove(self, subs: tuple[Subscription, ...]) -> None:
        """Stop ``subs``: a connection left with nothing is closed; one that keeps other streams
        stays open, unsubscribes where the protocol can, and drops what is still in flight."""
        gone = {(s.venue, s.instrument) for s in subs}
        for conn in list(self.connections):
            removed = tuple(s for s in conn.subs if (s.venue, s.instrument) in gone)
            if not removed:
                continue
            conn.subs = tuple(s for s in conn.subs if (s.venue, s.instrument) not in gone)
            keys = _sub_keys(removed)
            conn.muted = keys if conn.muted is None else np.union1d(conn.muted, keys)
            if not conn.subs:
                self.connections.remove(conn)
                conn.closing = True
                conn.disconnect()
                if conn.task is not None:
                    conn.task.cancel()
            elif conn.transport is not None and not conn.requested_at:
                conn.deferred_unsubscribe += removed
            else:
                msgs = self.unsubscribe_messages(conn, removed)
                if msgs and conn.transport is not None:  # paced, on this session only
                    task = asyncio.get_running_loop().create_task(
                        conn.send_requests(msgs, conn.transport)
                    )
                    self._senders.add(task)
                    task.add_done_callback(self._senders.discard)

    def unsubscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        """Messages that stop ``subs`` on an open connection ([] = the protocol cannot)."""
        return []

    def _next_index(self) -> int:
        return max((c.index for c in self.connections), default=-1) + 1

    async def run(self) -> None:
        self._running = True
        for c in self.connections:
            c.task = asyncio.create_task(c.run())
        self._tasks = [c.task for c in self.connections if c.task is not None]
        try:
            while not self.stopping.is_set():
                await self.pause(0.5)
                for t in self._tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()
        finally:
            for t in self._tasks:
                t.cancel()

    async def close(self) -> None:
        """Close every connection cleanly and flush what is buffered."""
        self.stopping.set()
        for t in list(self._senders):
            t.cancel()
        for c in self.connections:
            if c.transport is not None:
                with contextlib.suppress(Exception):
                    c.transport.send_close(WSCloseCode.OK)
                    c.transport.disconnect()
        for c in self.connections:
            if c.transport is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.transport.wait_disconnected(), 2.0)
            c.flush()
        self.closed = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
