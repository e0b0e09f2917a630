"""A fast local Kaiko trades stream for benchmarks: real gRPC over HTTP/2, many messages per frame.

:class:`~fairfeed.local.kaiko.KaikoServer` is a grpcio server: it writes every message as a DATA
frame (and a TCP segment) of its own and cannot send much faster than ~25k messages/s, so a
client measured against it pays for one message per read. Kaiko's servers (Go gRPC) under load
pack many messages into each DATA frame and each write, and a grpcio client's cost per message
depends on that. This server speaks the same wire protocol, with the python-hyper ``h2`` state
machine on an asyncio socket, and writes the way a loaded server does:

* the client's connection preface and SETTINGS are answered by ``h2``; a call to
  ``/kaikosdk.StreamTradesServiceV1/Subscribe`` (the path of the generated stub, checked by the
  adapter's tests) carrying ``authorization: Bearer <api key>`` and a request whose
  ``InstrumentCriteria`` selects every instrument of the messages gets ``:status 200``,
  ``content-type: application/grpc``, then the messages, then trailers ``grpc-status: 0``;
  anything else is answered Trailers-Only with UNIMPLEMENTED, UNAUTHENTICATED or
  INVALID_ARGUMENT;
* the messages are serialized ``StreamTradesResponseV1`` made once by ``KaikoServer``'s own
  generator (:meth:`KaikoServer.trade_messages`, counted in its ``stats``), laid out once as one
  gRPC length-prefixed byte string; each call streams the first ``count`` of them, cut into
  DATA frames of at most 16 KiB (:data:`MAX_FRAME`) wherever the bytes fall (gRPC messages may
  span frames), as much as the stream's and connection's flow-control windows allow: a client
  that stops reading stops the server;
* ``rate`` > 0 paces each call: every ``tick`` (1 ms, as the WebSocket load server does) the
  messages due by then are written at once; ``rate`` = 0 writes as fast as the windows and the
  socket take it.

:class:`FloodProcess` runs it in a process of its own (a benchmark's client must not share its
GIL or its CPU account).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.kaiko import KaikoServer
from fairfeed.local.serverprocess import ServerProcess
from fairfeed.local.thread import LoopThread
from fairfeed.providers.kaiko.adapter import TRADES_METHOD

log = logging.getLogger(__name__)

_PREFIX = struct.Struct(">BI")  # gRPC message prefix: compressed flag, length
_OK, _INVALID_ARGUMENT, _UNIMPLEMENTED, _UNAUTHENTICATED = 0, 3, 12, 16
_FLUSH_BYTES = 256 << 10  # hand the socket what is framed at least this often
_WRITE_HIGH = 1 << 20  # the transport's write buffer before it asks us to pause
# DATA frames are cut at 16 KiB, HTTP/2's default frame size and what grpc-go writes (its
# http2MaxFrameLen), even when the client allows more: grpcio advertises 4 MiB and larger
# frames would flatter the client
MAX_FRAME = 16384


def grpc_stream(messages: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    """``messages`` as one gRPC length-prefixed (uncompressed) byte string, and the offset at
    which each message ends in it."""
    parts: list[bytes] = []
    for m in messages:
        parts += (_PREFIX.pack(0, len(m)), m)
    ends = np.cumsum([_PREFIX.size + len(m) for m in messages], dtype=np.int64)
    return b"".join(parts), ends


@dataclass(eq=False)
class _Call:
    """One accepted call: how far its bytes are sent and what it is paced at."""

    stream_id: int
    count: int  # messages of the call
    end: int  # bytes of the call
    rate: float  # messages/s, 0 = flat out
    t0: float = 0.0
    sent: int = 0  # bytes handed to h2 (complete messages and a split one's head)


@dataclass(eq=False)
class _Request:
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)


class KaikoFlood:
    """Streams ``messages`` (serialized trades of ``instruments``, each an ``(exchange, kaiko
    class, code)``) to every trades call on ``host:port`` (0 = a free port).

    ``rate`` (messages/s per call, 0 = as fast as possible) and ``count`` (messages per call,
    0 = all of them) are read when a call starts. Counters: ``calls``, ``calls_done`` (ended
    with ``grpc-status: 0``), ``rejected``, ``frames`` (DATA frames), ``bytes_sent``,
    ``window_waits`` (passes that stopped on a flow-control window), :attr:`messages_sent`.
    """

    def __init__(
        self,
        messages: Sequence[bytes],
        instruments: Sequence[tuple[str, str, str]],
        *,
        api_key: str = "test-key",
        rate: float = 0.0,
        count: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        tick: float = 0.001,
    ) -> None:
        self.blob, self.ends = grpc_stream(messages)
        self.instruments = frozenset(instruments)
        self.api_key = api_key
        self.rate = rate
        self.count = count
        self.host = host
        self._port = port
        self.tick = tick
        self.calls = 0
        self.calls_done = 0
        self.rejected = 0
        self.frames = 0
        self.bytes_sent = 0
        self.window_waits = 0
        self._done_messages = 0  # messages of the calls that are over
        self._open: set[_Call] = set()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    @classmethod
    def trades(
        cls, cfg: SimulatorConfig, n: int, *, venue: str = "COINBASE", **kw: Any
    ) -> tuple[KaikoFlood, KaikoServer]:
        """A flood of ``n`` trade messages of ``cfg.prices`` at ``venue``, from a
        :class:`KaikoServer`'s generator; that server (never started) is returned for its
        ``stats`` (what was generated)."""
        source = KaikoServer(cfg, venues=(venue,))
        msgs = source.trade_messages(n)
        insts = [(i.exchange, i.kclass, i.code) for i in source.instruments]
        return cls(msgs, insts, **kw), source

    @property
    def port(self) -> int:
        return self._port

    @property
    def target(self) -> str:
        return f"{self.host}:{self._port}"

    @property
    def messages_sent(self) -> int:
        """Complete messages written, over every call."""
        ends = self.ends
        return self._done_messages + sum(
            int(np.searchsorted(ends, c.sent, "right")) for c in self._open
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for c in list(self._conns):
            c.abort()
        if server is not None:
            await server.wait_closed()

    # --- calls ---------------------------------------------------------------------------

    def _accept(self, req: _Request) -> tuple[int, str]:
        """The gRPC status a request gets (``_OK``: it is streamed) and why not."""
        h = req.headers
        if h.get(b":path") != TRADES_METHOD.encode():
            return _UNIMPLEMENTED, "only the trades service is served here"
        if h.get(b"authorization") != f"Bearer {self.api_key}".encode():
            return _UNAUTHENTICATED, "invalid or missing API key"
        body = bytes(req.body)
        if len(body) < _PREFIX.size:
            return _INVALID_ARGUMENT, "no request message"
        flag, size = _PREFIX.unpack_from(body)
        if flag or len(body) != _PREFIX.size + size:
            return _INVALID_ARGUMENT, "one uncompressed request message expected"
        try:
            crit = StreamTradesRequestV1.FromString(body[_PREFIX.size :]).instrument_criteria
        except Exception as exc:  # DecodeError
            return _INVALID_ARGUMENT, f"request does not decode: {type(exc).__name__}"
        chosen = {
            (e, k, c)
            for e in crit.exchange.split(",")
            for k in crit.instrument_class.split(",")
            for c in crit.code.split(",")
        }
        missing = [i for i in self.instruments if not any(_covers(x, i) for x in chosen)]
        if missing:
            return _INVALID_ARGUMENT, f"criteria leave out {':'.join(missing[0])}"
        return _OK, ""

    def _new_call(self, stream_id: int) -> _Call:
        n = min(self.count, len(self.ends)) if self.count > 0 else len(self.ends)
        end = int(self.ends[n - 1]) if n else 0
        call = _Call(stream_id, n, end, self.rate, time.monotonic())
        self.calls += 1
        self._open.add(call)
        return call

    def _end_call(self, call: _Call, done: bool) -> None:
        if call in self._open:
            self._open.discard(call)
            self._done_messages += int(np.searchsorted(self.ends, call.sent, "right"))
            self.calls_done += done

    def _due(self, call: _Call, now: float) -> int:
        """Bytes of ``call`` that may be sent by ``now``."""
        if call.rate <= 0:
            return call.end
        n = min(call.count, int((now - call.t0) * call.rate))
        return int(self.ends[n - 1]) if n > 0 else 0


def _covers(pattern: tuple[str, str, str], inst: tuple[str, str, str]) -> bool:
    return all(p == "*" or p == v for p, v in zip(pattern, inst, strict=True))


class _Conn(asyncio.Protocol):
    """One client connection: the h2 state machine and the task that writes its calls."""

    def __init__(self, server: KaikoFlood) -> None:
        self.s = server
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, _Request] = {}
        self.calls: dict[int, _Call] = {}
        self.writable = True
        self.closed = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH)
        self.s._conns.add(self)
        self.h2.initiate_connection()
        self.flush()
        self.task = asyncio.get_running_loop().create_task(self._send_loop())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.s._conns.discard(self)
        for call in self.calls.values():
            self.s._end_call(call, False)
        self.calls.clear()
        self.wake.set()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.wake.set()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.flush()  # h2 has queued a GOAWAY saying why
            self.abort()
            return
        h2 = self.h2
        for ev in events:
            if isinstance(ev, RequestReceived):
                self.requests[ev.stream_id] = _Request(dict(ev.headers))  # type: ignore[arg-type]
            elif isinstance(ev, DataReceived):
                req = self.requests.get(ev.stream_id)  # type: ignore[arg-type]
                if req is not None:
                    req.body += ev.data  # type: ignore[operator]
                h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)  # type: ignore[arg-type]
            elif isinstance(ev, StreamEnded):
                self._answer(ev.stream_id)  # type: ignore[arg-type]
            elif isinstance(ev, StreamReset):
                self.requests.pop(ev.stream_id, None)  # type: ignore[arg-type]
                call = self.calls.pop(ev.stream_id, None)  # type: ignore[arg-type]
                if call is not None:
                    self.s._end_call(call, False)
            elif isinstance(ev, (WindowUpdated, RemoteSettingsChanged)):
                self.wake.set()
            elif isinstance(ev, ConnectionTerminated):
                self.flush()
                self.abort()
                return
        self.flush()

    def _answer(self, stream_id: int) -> None:
        req = self.requests.pop(stream_id, None)
        if req is None:
            return
        code, message = self.s._accept(req)
        head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        if code != _OK:  # Trailers-Only: the status in the one HEADERS frame
            self.s.rejected += 1
            status = [(b"grpc-status", str(code).encode()), (b"grpc-message", message.encode())]
            self.h2.send_headers(stream_id, head + status, end_stream=True)
            return
        self.h2.send_headers(stream_id, head)
        self.calls[stream_id] = self.s._new_call(stream_id)
        self.wake.set()

    async def _send_loop(self) -> None:
        """Write what is due and what the windows allow; then sleep a tick (a paced call is
        open) or until a window update, a new call or a drained socket wakes us."""
        while not self.closed:
            self.wake.clear()
            try:
                self._write_due()
            except H2Error:  # a stream the client closed meanwhile: its reset event follows
                pass
            except Exception:  # a bug here must not leave the client waiting on a live socket
                log.exception("kaiko flood: send loop failed, connection dropped")
                self.abort()
                return
            self.flush()
            if any(c.rate > 0 for c in self.calls.values()):
                await asyncio.sleep(self.s.tick)
            elif self.writable and any(
                c.sent < c.end and self.h2.local_flow_control_window(c.stream_id) > 0
                for c in self.calls.values()
            ):
                await asyncio.sleep(0)  # more to write right away: let reads in first
            else:
                await self.wake.wait()

    def _write_due(self) -> None:
        h2, s, blob = self.h2, self.s, self.s.blob
        now = time.monotonic()
        pending = 0
        for call in list(self.calls.values()):
            sid = call.stream_id
            due = s._due(call, now)
            while call.sent < due and self.writable:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    s.window_waits += 1
                    break
                n = min(due - call.sent, window, h2.max_outbound_frame_size, MAX_FRAME)
                h2.send_data(sid, blob[call.sent : call.sent + n])
                call.sent += n
                s.frames += 1
                s.bytes_sent += n
                pending += n
                if pending >= _FLUSH_BYTES:
                    self.flush()  # may pause writing
                    pending = 0
            if call.sent >= call.end and self.writable:
                h2.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                del self.calls[sid]
                s._end_call(call, True)


# --- a process of its own ------------------------------------------------------------------


def _serve(pipe: Connection, prices: dict[str, float], n: int, api_key: str) -> None:
    # pragma: no cover - runs in the spawned process
    cfg = SimulatorConfig(prices, 0.0, quote_ratio=0.0, seed=7)
    flood, _ = KaikoFlood.trades(cfg, n, api_key=api_key)
    with LoopThread(flood).start() as loop:
        pipe.send(flood.target)
        while True:
            cmd, arg = pipe.recv()
            if cmd == "set":
                rate, count = arg
                loop.call(lambda r=rate, c=count: (setattr(flood, "rate", r),
                                                   setattr(flood, "count", c)))  # fmt: skip
                pipe.send(None)
            elif cmd == "stats":
                pipe.send(loop.call(lambda: flood_stats(flood)))
            else:
                return


def flood_stats(flood: KaikoFlood) -> dict[str, int]:
    """The server's counters, as :meth:`FloodProcess.stats` returns them."""
    return {
        "calls": flood.calls,
        "calls_done": flood.calls_done,
        "rejected": flood.rejected,
        "messages_sent": flood.messages_sent,
        "frames": flood.frames,
        "bytes_sent": flood.bytes_sent,
        "window_waits": flood.window_waits,
    }


class FloodProcess(ServerProcess):
    """:class:`KaikoFlood` of ``n`` trade messages of ``prices`` at Coinbase, in a process of
    its own; :meth:`set` changes the rate and count of the calls that start afterwards."""

    what = "the Kaiko flood server"
    answer_timeout = 120.0  # it generates and serializes the n messages first

    def __init__(self, prices: dict[str, float], n: int, api_key: str = "test-key") -> None:
        super().__init__(_serve, (dict(prices), n, api_key))
        self.target = self.address

    def set(self, rate: float, count: int = 0) -> None:
        """Pace the next calls at ``rate`` messages/s (0 = flat out), ``count`` messages each
        (0 = all)."""
        self._ask(("set", (rate, count)))

    def stats(self) -> dict[str, int]:
        """:func:`flood_stats` of the server."""
        return self._ask(("stats", None))
