"""Hostile and clumsy clients against a running daemon: none of them hurts it.

A real daemon (simulator, broker) and real sockets: clients that pipeline without reading, a
client trickling bytes, idle HTTP connections filling the endpoint, a 60,000-character venue.
"""

from __future__ import annotations

import re
import select
import socket
import threading
from pathlib import Path

import orjson
import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.daemon import ctl_protocol as proto
from fairfeed.local.simulator import SimulatorServer, SimulatorThread
from tests.daemon.daemon_process import DaemonProcess
from tests.daemon.http_probe import get, rss, sample
from tests.daemon.socket_loop import trickle
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

ATTACKERS = 12
MAX_OUTPUT = 256 * 1024


def _config(path: Path, sims: SimulatorThread, bootstrap: str) -> Path:
    path.write_text(
        f"""
[daemon]
workers = 1
heartbeat_interval = 0.1
control_idle_timeout = 2.0
control_max_clients = 16
control_max_output = {MAX_OUTPUT}

[kafka]
bootstrap = "{bootstrap}"
create_topics = true
ticks_topic = "hostile.ticks"
fair_topic = "hostile.fair"

[metrics]
listen = "127.0.0.1:0"
max_clients = 16

[[providers]]
name = "sim-a"
kind = "simulator"
venue = "SIMX"
url = "{sims.servers[0].url}"

[[subscriptions]]
provider = "sim-a"
instruments = ["BTC-USD"]
"""
    )
    return path


def _ask(daemon: DaemonProcess, cmd: str, args: dict | None = None) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(proto.request(1, cmd, args))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            assert chunk, "closed without an answer"
            buf += chunk
    return orjson.loads(buf)


@pytest.fixture(scope="module")
def running(tmp_path_factory, kafka_broker):
    tmp = tmp_path_factory.mktemp("hostile")
    sims = SimulatorThread(
        SimulatorServer("sim-a", SimulatorConfig(prices={"BTC-USD": 64000.0}, rate=200))
    ).start()
    daemon = DaemonProcess(tmp, _config(tmp / "fairfeed.toml", sims, kafka_broker.bootstrap))
    try:
        found = wait_for(
            lambda: re.search(r"metrics +(http://\S+)/metrics", daemon.stdout()), 60, "metrics"
        )
        base = found[1]
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, "/readyz = 200", interval=0.2)
        yield daemon, base
    finally:
        code = daemon.stop()
        sims.stop()
        assert code == 0, daemon.stderr()


def _flood(path: Path, outcome: list[str]) -> None:
    """Pipeline `stats` requests and never read an answer, until the daemon hangs up (at most
    64 KiB of requests, ~3,000 answers of a few KiB each: the failure bound)."""
    burst = proto.request(1, "stats") * 50
    sent = 0
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        try:
            while sent < 64 * 1024:
                s.sendall(burst)
                sent += len(burst)
        except OSError:
            outcome.append("dropped")
            return
        # all sent (the kernel buffers it): the hang-up may come as the daemon reads it
        p = select.poll()
        p.register(s, select.POLLRDHUP)
        if p.poll(30_000):
            outcome.append("dropped")
            return
    outcome.append(f"never dropped after {sent} bytes of requests")


def test_clients_that_ask_without_reading_are_dropped_and_memory_stays_bounded(running) -> None:
    daemon, base = running
    before = rss(daemon.pid)
    outcome: list[str] = []
    floods = [
        threading.Thread(target=_flood, args=(daemon.socket, outcome)) for _ in range(ATTACKERS)
    ]
    for t in floods:
        t.start()
    answered = 0
    while any(t.is_alive() for t in floods) or not answered:  # others are served meanwhile
        assert _ask(daemon, "status")["ok"] is True
        answered += 1
    for t in floods:
        t.join(60)
    assert outcome == ["dropped"] * ATTACKERS, outcome
    # each cost at most its bound, an answer and a read of requests, and was freed
    grown = rss(daemon.pid) - before
    assert grown < 64 << 20, f"supervisor RSS grew {grown >> 20} MiB"
    drops = sample(base, "fairfeed_socket_drops_total", socket="control", reason="overflow")
    assert drops == ATTACKERS
    wait_for(
        lambda: sample(base, "fairfeed_socket_buffered_bytes", socket="control") == 0,
        10,
        "the dropped clients' buffers freed",
    )
    assert daemon.stderr().count("control socket: dropped client pid ") == ATTACKERS
    assert get(f"{base}/healthz")[0] == 200


def test_a_client_trickling_bytes_is_dropped_within_the_timeout(running) -> None:
    daemon, base = running
    request = proto.request(1, "list")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(daemon.socket))
        # a byte every 0.25 s, each well within the 2 s idle timeout
        answer = trickle(s, request * 5, 0.25)
    assert orjson.loads(answer)["error"] == {
        "code": "timeout",
        "message": "no complete request within 2s",
    }
    assert sample(base, "fairfeed_socket_drops_total", socket="control", reason="slow_request")


def test_idle_http_connections_never_keep_the_health_checks_out(running) -> None:
    _daemon, base = running
    host, port = base.removeprefix("http://").rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            status, body = get(f"{base}{path}")
            assert status == 200, (path, body[:200])
        assert sample(base, "fairfeed_socket_drops_total", socket="http", reason="evicted") > 0
        assert sample(base, "fairfeed_socket_drops_total", socket="http", reason="busy") == 0
    finally:
        for s in idle:
            s.close()


def test_a_huge_venue_name_is_refused_and_opens_nothing(running) -> None:
    daemon, _base = running

    def listed() -> list[tuple[str, str, str]]:
        subs = _ask(daemon, "list")["result"]["subscriptions"]
        return [(s["provider"], s["venue"], s["instrument"]) for s in subs]

    before = listed()
    connected = _ask(daemon, "stats")["result"]["totals"]["connected"]
    answer = _ask(
        daemon,
        "subscribe",
        {"provider": "sim-a", "venue": "V" * 60_000, "instruments": ["ETH-USD"]},
    )
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_argument"
    assert "'venue' is 60000 characters long: at most 64" in answer["error"]["message"]
    assert len(orjson.dumps(answer)) < 500  # the name is not echoed back
    # refused before anything changed: no subscription, no registry entry, no connection
    assert listed() == before == [("sim-a", "SIMX", "BTC-USD")]
    assert _ask(daemon, "stats")["result"]["totals"]["connected"] == connected
    state = daemon.state.read_text()
    assert "VVVV" not in state and "ETH-USD" not in state
