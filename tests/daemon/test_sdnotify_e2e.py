"""A real daemon tells a real ``NOTIFY_SOCKET`` (a datagram socket this test binds) what it does:
STATUS while starting, READY=1 once everything is up, WATCHDOG=1 from its loop (and none while
the supervisor is stopped), RELOADING=1 / READY=1 around SIGHUP, STOPPING=1 at SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest

from fairfeed.kafka.broker import LocalBroker, free_port
from tests.daemon.daemon_process import DaemonProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s


class NotifyListener:
    """The service manager's end: every datagram received, in order, as a list of lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[list[str]] = []

    def next(self, timeout: float) -> list[str] | None:
        """The next datagram, or None if none arrives within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        msg = data.decode().split("\n")
        self.messages.append(msg)
        return msg

    def until(self, pred: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        """Receive until a datagram satisfies ``pred``; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"no {what} within {timeout}s; got {self.messages}")

    def drain(self) -> list[list[str]]:
        """Datagrams already queued, without waiting."""
        out = []
        while (msg := self.next(0.001)) is not None:
            out.append(msg)
        return out


def _default_config(tmp_path: Path, bootstrap: str = "") -> Path:
    """The packaged default as a file (so that SIGHUP has a file to reload)."""
    text = resources.files("fairfeed.core").joinpath("default.toml").read_text()
    if bootstrap:
        assert 'bootstrap = ""' in text
        text = text.replace('bootstrap = ""', f'bootstrap = "{bootstrap}"\ncreate_topics = true', 1)
    path = tmp_path / "fairfeed.toml"
    path.write_text(text)
    return path


def _status(msg: list[str]) -> str:
    return next((line[7:] for line in msg if line.startswith("STATUS=")), "")


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0] == "T"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path / "notify.sock")
    yield lst
    lst.sock.close()


def test_daemon_speaks_sd_notify(tmp_path: Path, listener: NotifyListener) -> None:
    config = _default_config(tmp_path)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = DaemonProcess(tmp_path, config, env=env)
    try:
        ready = listener.until(lambda m: "READY=1" in m, 120.0, "READY=1")
        before = [m for m in listener.messages[:-1]]
        statuses = [line for m in before for line in m if line.startswith("STATUS=")]
        assert any("starting" in s for s in statuses), before
        assert not any("READY=1" in m for m in before)
        assert any(line.startswith("STATUS=ready: ") for line in ready), ready
        # By READY=1 every child is up and ready: the control socket answers for all of them.
        assert daemon.proc.poll() is None

        listener.until(lambda m: m == ["WATCHDOG=1"], 5.0, "a WATCHDOG=1 after READY")
        listener.until(lambda m: m == ["WATCHDOG=1"], 5.0, "a second WATCHDOG=1")

        # A stuck supervisor loop: stopped, it sends nothing; three intervals of silence.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _stopped(daemon.pid), 5.0, "the supervisor to be stopped")
            listener.drain()  # sent before the stop took effect
            silent = listener.next(3 * WATCHDOG_USEC / 2e6)
            assert silent is None, f"a stopped supervisor sent {silent}"
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        listener.until(lambda m: m == ["WATCHDOG=1"], 5.0, "WATCHDOG=1 after SIGCONT")

        os.kill(daemon.pid, signal.SIGHUP)
        reloading = listener.until(lambda m: "RELOADING=1" in m, 10.0, "RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        reloaded = listener.until(lambda m: "READY=1" in m, 10.0, "READY=1 after the reload")
        assert "STATUS=reloaded the configuration" in reloaded, reloaded

        code = daemon.stop()
        assert code == 0, daemon.stderr()
        listener.drain()
        stopping = [m for m in listener.messages if "STOPPING=1" in m]
        assert stopping and "STATUS=stopping: SIGTERM" in stopping[0], listener.messages
        after = listener.messages[listener.messages.index(stopping[0]) + 1 :]
        assert not any("READY=1" in m for m in after), after
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def test_ready_waits_for_kafka(tmp_path: Path, listener: NotifyListener) -> None:
    """Every child up is not enough: READY=1 comes once the broker answers."""
    port = free_port()
    config = _default_config(tmp_path, f"127.0.0.1:{port}")
    daemon = DaemonProcess(tmp_path, config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    broker = None
    try:

        def only_kafka_missing(msg: list[str]) -> bool:
            text = _status(msg)
            if not text.startswith("starting, not ready: "):
                return False
            problems = text.removeprefix("starting, not ready: ").split("; ")
            return all(p.startswith("kafka") for p in problems)

        waiting = listener.until(only_kafka_missing, 120.0, "a status naming only Kafka")
        assert f"kafka at 127.0.0.1:{port} has not answered yet" in _status(waiting)
        assert not any("READY=1" in m for m in listener.messages), listener.messages

        broker = LocalBroker(port=port).start(timeout=15.0)
        ready = listener.until(lambda m: "READY=1" in m, 120.0, "READY=1 once Kafka is up")
        assert _status(ready).startswith("ready: "), ready
        assert daemon.stop() == 0, daemon.stderr()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        if broker is not None:
            broker.stop(grace=0.2)
