"""sd_notify datagrams (path and abstract-namespace sockets), the watchdog interval from the
environment, and what the supervisor's notifier sends when."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from fairfeed.daemon.sdnotify import NotifyError, SdNotify, watchdog_interval
from fairfeed.daemon.service import ServiceNotifier


def _recv(sock: socket.socket) -> list[str]:
    sock.settimeout(5.0)
    return sock.recv(4096).decode().split("\n")


def test_path_socket_receives_one_datagram_per_send(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "n.sock"))
        n = SdNotify(str(tmp_path / "n.sock"))
        n.send("READY=1", "STATUS=up")
        n.send("WATCHDOG=1")
        assert _recv(sock) == ["READY=1", "STATUS=up"]
        assert _recv(sock) == ["WATCHDOG=1"]
        n.close()


def test_abstract_namespace_socket() -> None:
    name = f"fairfeed-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        SdNotify("@" + name).send("STOPPING=1")
        assert _recv(sock) == ["STOPPING=1"]


def test_from_environment_takes_the_socket_out_of_the_environment(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "PATH": "/bin"}
    n = SdNotify.from_environment(env)
    assert n.enabled and env == {"PATH": "/bin"}
    n.close()
    off = SdNotify.from_environment({})
    assert not off.enabled
    off.send("READY=1")  # no socket: nothing to do, no error


def test_a_missing_socket_is_an_error_naming_it(tmp_path: Path) -> None:
    n = SdNotify(str(tmp_path / "absent.sock"))
    with pytest.raises(NotifyError, match=r"absent\.sock"):
        n.send("READY=1")
    with pytest.raises(NotifyError, match="not a unix socket"):
        SdNotify("relative/path")


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0 and mine == {}
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    with pytest.raises(ValueError, match="WATCHDOG_USEC"):
        watchdog_interval({"WATCHDOG_USEC": "0"})


class _Recorder(SdNotify):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[tuple[str, ...]] = []

    def send(self, *lines: str) -> None:
        self.sent.append(lines)


def test_notifier_pings_at_the_interval_and_says_ready_once() -> None:
    now = [0.0]
    rec = _Recorder()
    svc = ServiceNotifier(rec, 0.5, clock=lambda: now[0])
    state = [(False, "starting, not ready: compute not ready")]
    svc.ready_check = lambda: state[0]
    svc.beat()
    now[0] = 0.3
    svc.beat()  # too early
    now[0] = 0.5
    svc.beat()
    assert rec.sent == [("WATCHDOG=1",), ("WATCHDOG=1",)]
    rec.sent.clear()
    svc.tick()
    svc.tick()  # same status: not repeated
    assert rec.sent == [("STATUS=starting, not ready: compute not ready",)]
    state[0] = (True, "ready: 4 children up")
    svc.tick()  # READY=1 is never held back
    svc.tick()
    now[0] = 1.0
    state[0] = (False, "not ready: kafka output blocked for 0.1s")
    svc.tick()  # within a second of the last status: held back
    now[0] = 1.4
    state[0] = (False, "not ready: kafka output blocked for 0.5s")
    svc.tick()
    now[0] = 1.6
    state[0] = (False, "not ready: kafka output blocked for 0.7s")
    svc.tick()  # a second on: the latest words go out
    assert rec.sent[1:] == [
        ("READY=1", "STATUS=ready: 4 children up"),
        ("STATUS=not ready: kafka output blocked for 0.7s",),
    ]


def test_reload_ends_with_ready_only_once_ready() -> None:
    rec = _Recorder()
    svc = ServiceNotifier(rec, None)
    svc.reloading()
    svc.reloaded("bad key")
    assert rec.sent[0][0] == "RELOADING=1"
    assert rec.sent[1] == ("STATUS=reload failed, running on the previous configuration: bad key",)
    svc.ready_check = lambda: (True, "ready")
    svc.tick()
    svc.reloading()
    svc.reloaded("")
    assert rec.sent[-1] == ("READY=1", "STATUS=reloaded the configuration")
    svc.stopping("SIGTERM")
    assert rec.sent[-1] == ("STOPPING=1", "STATUS=stopping: SIGTERM")
    svc.beat()  # no watchdog configured
    assert rec.sent[-1][0] == "STOPPING=1"


def test_a_failing_socket_is_logged_once_and_the_supervisor_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = ServiceNotifier(SdNotify(str(tmp_path / "gone.sock")), 0.0)
    svc.beat()
    svc.beat()
    errors = [r for r in caplog.records if "gone.sock" in r.getMessage()]
    assert len(errors) == 1
