"""Control socket: protocol validation and the server's defences, with a stand-in handler."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import orjson
import pytest

from fairfeed.daemon import ctl_protocol as proto
from fairfeed.daemon.ctl_server import ControlServer, ControlSocketError
from tests.daemon.socket_loop import SelectLoop, trickle
from tests.waiting import wait_for


@pytest.mark.parametrize(
    ("line", "code", "text"),
    [
        (b"{nope", "bad_request", "not valid JSON"),
        (b"[1, 2]", "bad_request", "a request is a JSON object"),
        (b'{"cmd": "list"}', "bad_request", "'id' must be"),
        (b'{"id": true, "cmd": "list"}', "bad_request", "'id' must be"),
        (b'{"id": 1}', "bad_request", "'cmd' must be a string"),
        (b'{"id": 1, "cmd": "list", "args": [1]}', "bad_request", "'args' must be an object"),
        (b'{"id": 1, "cmd": "list", "extra": 1}', "bad_request", "unknown request fields"),
        (b'{"id": 1, "cmd": "explode"}', "unknown_command", "unknown command 'explode'"),
    ],
)
def test_bad_requests_are_named(line: bytes, code: str, text: str) -> None:
    with pytest.raises(proto.ProtocolError) as err:
        proto.parse_request(line)
    assert err.value.code == code and text in err.value.message


class Served(SelectLoop):
    """A ControlServer driven by a select loop in a thread, as the supervisor drives it."""

    def __init__(self, path: Path, **kw) -> None:
        self.calls: list[tuple[str, dict]] = []

        def handler(cmd: str, args: dict):
            self.calls.append((cmd, args))
            if cmd == "stats":
                raise RuntimeError("boom")
            return {"echo": args}

        super().__init__(ControlServer(path, handler, **kw))


@pytest.fixture
def served(tmp_path: Path):
    s = Served(tmp_path / "ctl.sock", max_clients=4, idle_timeout=0.5)
    yield s
    s.close()


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(str(path))
    return s


def _answers(s: socket.socket, n: int) -> list[dict]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [orjson.loads(line) for line in buf.splitlines()]


def test_socket_mode_and_pipelined_requests_in_order(served: Served) -> None:
    path = served.server.path
    assert oct(path.stat().st_mode & 0o777) == "0o660"
    with _connect(path) as s:
        s.sendall(proto.request(1, "list") + proto.request("b", "status", {"x": 1}) + b"\n")
        a, b = _answers(s, 2)
    assert a == {"id": 1, "ok": True, "result": {"echo": {}}}
    assert b == {"id": "b", "ok": True, "result": {"echo": {"x": 1}}}


def test_handler_failure_is_an_internal_error_and_the_server_goes_on(served: Served) -> None:
    with _connect(served.server.path) as s:
        s.sendall(proto.request(1, "stats") + b"garbage\n" + proto.request(2, "list"))
        a, b, c = _answers(s, 3)
    assert a["error"] == {"code": "internal", "message": "RuntimeError: boom"}
    assert b["ok"] is False and b["error"]["code"] == "bad_request"
    assert c["ok"] is True and c["id"] == 2


def test_oversized_request_is_refused_and_closed(served: Served) -> None:
    with _connect(served.server.path) as s:
        s.sendall(b"x" * (proto.MAX_REQUEST + 10))
        (a,) = _answers(s, 1)
        assert a["error"]["code"] == "too_large"
        assert s.recv(10) == b""  # closed
    with _connect(served.server.path) as s:  # and the server still serves
        s.sendall(proto.request(3, "list"))
        assert _answers(s, 1)[0]["ok"] is True


def test_silent_client_is_dropped_after_the_idle_timeout(served: Served) -> None:
    with _connect(served.server.path) as s:
        start = time.monotonic()
        (a,) = _answers(s, 1)
        assert a["error"]["code"] == "timeout"
        assert s.recv(10) == b""
        assert 0.4 < time.monotonic() - start < 2.5


def test_clients_beyond_the_limit_are_told_busy(served: Served) -> None:
    held = [_connect(served.server.path) for _ in range(4)]
    try:
        wait_for(lambda: len(served.server.clients) == 4, 3.0)
        with _connect(served.server.path) as extra:
            (a,) = _answers(extra, 1)
            assert a["error"]["code"] == "busy"
        held[0].sendall(proto.request(9, "list"))
        assert _answers(held[0], 1)[0]["id"] == 9
    finally:
        for s in held:
            s.close()


def test_client_vanishing_mid_request_does_not_hurt(served: Served) -> None:
    for _ in range(5):  # 5 rounds of as many clients as allowed at once
        clients = [_connect(served.server.path) for _ in range(4)]
        wait_for(lambda: len(served.server.clients) == 4, 3.0)  # accepted, not still in the backlog
        for s in clients:
            s.sendall(b'{"id": 1, "cmd": "li')
            s.close()
        wait_for(lambda: served.server.clients == {}, 3.0)  # the hang-ups free their places
    with _connect(served.server.path) as s:
        s.sendall(proto.request(5, "list"))
        a = _answers(s, 1)
        assert a[0]["id"] == 5, a


def test_a_second_daemon_cannot_take_a_served_socket(served: Served, tmp_path: Path) -> None:
    with pytest.raises(ControlSocketError, match="another daemon"):
        ControlServer(served.server.path, lambda c, a: None).open()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody serves: taken over
    server = ControlServer(stale, lambda c, a: None)
    server.open()
    server.close()
    assert not stale.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(tmp_path / "file", lambda c, a: None).open()
    with pytest.raises(ControlSocketError, match="no such group"):
        ControlServer(tmp_path / "g.sock", lambda c, a: None, group="no-such-group-x").open()
    assert os.path.exists(tmp_path / "file")


@pytest.fixture
def bounded(tmp_path: Path):
    s = Served(tmp_path / "b.sock", max_clients=4, idle_timeout=0.5, max_output=1 << 16)
    yield s
    s.close()


def _flood(path: Path, pad: int, sent: list[int]) -> None:
    """Pipeline requests with ``pad``-byte answers and never read; stop once the server hangs up."""
    req = proto.request(1, "list", {"pad": "x" * pad}) * 20
    with _connect(path) as s:
        try:
            while sum(sent) < 64 << 20:  # failure bound: 64 MiB of requests
                s.sendall(req)
                sent.append(len(req))
        except OSError:
            return


def test_client_that_asks_without_reading_is_dropped_and_others_are_answered(
    bounded: Served,
) -> None:
    server, sent = bounded.server, []
    flood = threading.Thread(target=_flood, args=(server.path, 4000, sent))
    flood.start()
    with _connect(server.path) as other:
        n = 0
        while flood.is_alive() and n < 200:  # answered all along, in order
            n += 1
            other.sendall(proto.request(n, "status"))
            assert _answers(other, 1)[0]["id"] == n
            # never more than the bound, one answer and one read of requests held for it
            held = sum(len(c.inbuf) + len(c.outbuf) for c in list(server.clients.values()))
            assert held <= (1 << 16) + 5000 + 65536 + 200
        flood.join(10)
        assert not flood.is_alive(), "the flooding client was never dropped"
    assert server.drops["overflow"] == 1 and sum(sent) < 4 << 20
    wait_for(lambda: not server.clients, 3.0, "its buffers freed")


def test_a_trickle_of_bytes_does_not_keep_a_slot(bounded: Served) -> None:
    """Each byte would reset an idle timer: a request must arrive whole within the timeout."""
    with _connect(bounded.server.path) as s:
        answer = trickle(s, b'{"id": 1, "cmd": "list"}' * 20, 0.1)  # 48 s at most
    assert orjson.loads(answer)["error"] == {
        "code": "timeout",
        "message": "no complete request within 0.5s",
    }
    assert bounded.server.drops["slow_request"] == 1


def test_a_client_that_stops_reading_its_answers_is_dropped(tmp_path: Path) -> None:
    served = Served(tmp_path / "s.sock", max_clients=4, idle_timeout=0.5, max_output=8 << 20)
    try:
        with _connect(served.server.path) as s:
            # 4 MiB of answers: more than the kernel buffers, less than max_output
            s.sendall(proto.request(1, "list", {"pad": "x" * 60_000}) * 70)
            wait_for(lambda: served.server.drops["stalled"] == 1, 10.0, "the stalled client gone")
            assert served.server.clients == {} and served.server.drops["overflow"] == 0
    finally:
        served.close()
