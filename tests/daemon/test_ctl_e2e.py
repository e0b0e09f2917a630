"""The control socket against a running daemon: every command, bad input, live changes,
persistence across restarts and reload. Real simulators, real broker, real consumer."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import KIND_ASK
from fairfeed.daemon import ctl_client
from fairfeed.kafka.encode import decode_ticks
from fairfeed.local.simulator import SimulatorServer, SimulatorThread
from tests.conftest import consume_all
from tests.daemon.daemon_process import DaemonProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3200.0, "DOGE-USD": 0.2}


def _config(path: Path, sims: SimulatorThread, bootstrap: str, tag: str, extra: str = "") -> Path:
    text = f"""
[daemon]
workers = 2
heartbeat_interval = 0.1
control_idle_timeout = 1.0
control_max_clients = 16

[kafka]
bootstrap = "{bootstrap}"
create_topics = true
ticks_topic = "{tag}.ticks"
fair_topic = "{tag}.fair"
linger_ms = 5

[fair]
method = "median"
stale_after = 60.0
min_interval = 0.05
"""
    for name, server in zip(("sim-a", "sim-b"), sims.servers, strict=True):
        text += f"""
[[providers]]
name = "{name}"
kind = "simulator"
venue = "{name.upper()}X"
url = "{server.url}"

[[subscriptions]]
provider = "{name}"
instruments = ["BTC-USD", "ETH-USD"]
"""
    path.write_text(text + extra)
    return path


def _sims() -> SimulatorThread:
    return SimulatorThread(
        *[
            SimulatorServer(
                name,
                SimulatorConfig(
                    prices=PRICES,
                    rate=900,
                    batch=2,
                    price_offset_bps=off,
                    seed=seed,
                    heartbeat_interval=0.5,
                ),
            )
            for name, off, seed in (("sim-a", -3.0, 1), ("sim-b", 4.0, 2))
        ]
    ).start()


def ctl(daemon: DaemonProcess, *args: str, json_out: bool = True) -> tuple[int, object, str]:
    cmd = [sys.executable, "-m", "fairfeed", "ctl", "--socket", str(daemon.socket)]
    if json_out:
        cmd.append("--json")
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30)
    out: object = proc.stdout
    if json_out and proc.returncode == 0:
        out = json.loads(proc.stdout)
    return proc.returncode, out, proc.stderr


def raw(daemon: DaemonProcess, payload: bytes, answers: int = 1) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(daemon.socket))
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < answers:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    return [orjson.loads(line) for line in buf.splitlines()]


@pytest.fixture(scope="module")
def running(tmp_path_factory, kafka_broker):
    tmp = tmp_path_factory.mktemp("ctl")
    sims = _sims()
    cfg = _config(tmp / "fairfeed.toml", sims, kafka_broker.bootstrap, "ctl")
    daemon = DaemonProcess(tmp, cfg)
    try:
        wait_for(lambda: daemon.socket.exists(), 30, "the control socket")
        wait_for(
            lambda: all(s["state"] == "streaming" for s in ctl(daemon, "list")[1]["subscriptions"]),
            30,
            "every subscription streaming",
            interval=0.2,
        )
        yield daemon, sims, kafka_broker.bootstrap, cfg
    finally:
        code = daemon.stop()
        sims.stop()
        assert code == 0, daemon.stderr()
        assert daemon.leftovers() == []
        assert not daemon.socket.exists()


def test_list_and_status_tables_and_json(running) -> None:
    daemon, *_ = running
    code, out, _ = ctl(daemon, "list", json_out=False)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["PROVIDER", "VENUE", "INSTRUMENT", "CLASS", "STATE"]
    assert sum("streaming" in line for line in lines) == 4
    code, res, _ = ctl(daemon, "list", "--provider", "sim-b")
    assert code == 0 and {s["provider"] for s in res["subscriptions"]} == {"sim-b"}
    assert all(s["messages"] > 0 and s["last_data_age"] < 5 for s in res["subscriptions"])
    # the first deliveries may still be on their way when the streams are up
    st = wait_for(
        lambda: (r := ctl(daemon, "status")[1])["kafka"]["delivered"] > 0 and r, 15, "deliveries"
    )
    assert st["subscriptions"] >= 4 and st["pid"] == daemon.pid
    names = {p["name"]: p for p in st["processes"]}
    assert set(names) == {"ingest-0", "ingest-1", "compute"}
    assert all(p["ready"] and p["heartbeat_age"] < 2 for p in names.values())
    assert [r["worker"] for r in st["rings"]] == [0, 1] and st["kafka"]["delivered"] > 0
    assert st["kafka"]["security"] == "PLAINTEXT"  # how the brokers are reached, no secret
    code, out, _ = ctl(daemon, "status", json_out=False)
    assert code == 0 and "PROCESS" in out and "kafka" in out


def test_stats_counts_every_process(running) -> None:
    daemon, *_ = running
    code, res, _ = ctl(daemon, "stats")
    assert code == 0
    assert res["processes"]["compute"]["records_in"] > 0
    assert res["totals"]["records_in"] >= res["processes"]["compute"]["records_in"]
    code, out, _ = ctl(daemon, "stats", json_out=False)
    assert code == 0 and out.splitlines()[0].split()[0] == "COUNTER"


def test_set_log_level(running) -> None:
    daemon, *_ = running
    assert ctl(daemon, "set-log-level", "debug")[1] == {"level": "DEBUG"}
    assert ctl(daemon, "set-log-level", "info")[1] == {"level": "INFO"}
    code, _, err = ctl(daemon, "set-log-level", "chatty")
    assert code == 1 and "unknown log level 'CHATTY'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("subscribe", "nobody", "BTC-USD"), "unknown provider 'nobody'"),
        (("subscribe", "sim-a", "btc usd"), "invalid instrument 'btc usd'"),
        (("subscribe", "sim-a", "BTC-USD", "--class", "banana"), "unknown data class 'banana'"),
        (("subscribe", "sim-a", "BTC-USD", "--class", "perpetual"), "another data class"),
        (("unsubscribe", "nobody", "BTC-USD"), "unknown provider"),
        (("reload",), None),  # valid: the file is unchanged, nothing to do
    ],
)
def test_bad_commands_get_precise_errors(running, args, message) -> None:
    daemon, *_ = running
    code, out, err = ctl(daemon, *args)
    if message is None:
        assert code == 0 and out["subscribed"] == [] and out["unsubscribed"] == []
    else:
        assert code == 1 and message in err


def test_bad_input_on_the_socket_never_hurts(running) -> None:
    daemon, *_ = running
    a, b, c = raw(daemon, b"{oops\n" + b'{"id": 1, "cmd": "fly"}\n' + b'{"id": 2}\n', 3)
    assert a["error"]["code"] == "bad_request" and b["error"]["code"] == "unknown_command"
    assert c["error"]["code"] == "bad_request"
    (big,) = raw(daemon, b"{" + b" " * (70 * 1024))
    assert big["error"]["code"] == "too_large"
    # a client that says nothing is dropped after the idle timeout (1 s in this config)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(daemon.socket))
        assert orjson.loads(s.recv(4096))["error"]["code"] == "timeout"
    # many clients at once: each is answered, or told busy; none blocks the daemon
    results: list[str] = []

    def one() -> None:
        try:
            (r,) = raw(daemon, b'{"id": 7, "cmd": "status"}\n')
            results.append("ok" if r["ok"] else r["error"]["code"])
        except OSError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 40 and set(results) <= {"ok", "busy"} and "ok" in results
    assert ctl(daemon, "status")[0] == 0  # still serving


def _fair(bootstrap: str, inst: str) -> list[dict]:
    msgs = [orjson.loads(v) for _p, _k, v in consume_all(bootstrap, "ctl.fair", timeout=20)]
    return [m for m in msgs if m["instrument"] == inst]


def test_live_subscribe_reaches_kafka_and_unsubscribe_stops_it_without_touching_others(
    running,
) -> None:
    daemon, _, bootstrap, _ = running
    t0 = time.time_ns()
    code, res, err = ctl(daemon, "subscribe", "sim-a", "DOGE-USD")
    assert code == 0, err
    assert res["added"] == [{"provider": "sim-a", "venue": "SIM-AX", "instrument": "DOGE-USD"}]
    first = wait_for(lambda: _fair(bootstrap, "DOGE-USD"), 30, "DOGE-USD fair prices")
    # measured by the daemon's own emission time, not by how long polling Kafka takes here
    assert min(m["ts"] for m in first) - t0 < 5_000_000_000
    assert ctl(daemon, "subscribe", "sim-a", "DOGE-USD")[1]["already"]  # idempotent
    listed = {
        s["instrument"]: s for s in ctl(daemon, "list", "--provider", "sim-a")[1]["subscriptions"]
    }
    wait_for(
        lambda: ctl(daemon, "list", "--provider", "sim-a")[1]["subscriptions"][-1]["messages"] > 0,
        5, "DOGE-USD counted",
    )  # fmt: skip
    assert "DOGE-USD" in listed
    time.sleep(1.0)
    code, res, _ = ctl(daemon, "unsubscribe", "sim-a", "DOGE-USD")
    assert code == 0 and len(res["removed"]) == 1
    t_unsub = time.time_ns()
    time.sleep(2.0)
    late = [m for m in _fair(bootstrap, "DOGE-USD") if m["ts"] > t_unsub + 1_000_000_000]
    assert late == []
    assert ctl(daemon, "unsubscribe", "sim-a", "DOGE-USD")[1]["absent"]
    # sim-a's ETH-USD stream, on the connection nobody touched, has no gap over the whole time
    groups = [decode_ticks(v) for _p, _k, v in consume_all(bootstrap, "ctl.ticks", timeout=20)]
    eth = [g for g in groups if g["provider"] == "sim-a" and g["instrument"] == "ETH-USD"]
    kind = np.concatenate([g["kind"] for g in eth])
    seq = np.concatenate([g["sequence"] for g in eth])
    ts = np.concatenate([g["ts_receive"] for g in eth])
    seq = seq[kind != KIND_ASK]
    assert ts.min() < t0 and ts.max() > t_unsub  # it covers the whole episode
    assert np.array_equal(np.diff(seq), np.ones(len(seq) - 1))


def test_changes_survive_a_restart_unless_the_configuration_changed(
    tmp_path: Path, kafka_broker
) -> None:
    sims = _sims()
    try:
        cfg = _config(tmp_path / "f.toml", sims, kafka_broker.bootstrap, "state")
        first = DaemonProcess(tmp_path, cfg)
        wait_for(lambda: first.socket.exists(), 30, "socket")
        wait_for(lambda: ctl(first, "status")[0] == 0, 10, "status")
        assert ctl(first, "subscribe", "sim-b", "DOGE-USD")[0] == 0
        assert first.stop() == 0
        saved = json.loads(first.state.read_text())
        assert {"provider": "sim-b", "venue": "SIM-BX", "instrument": "DOGE-USD",
                "data_class": "spot"} in saved["subscriptions"]  # fmt: skip

        second = DaemonProcess(tmp_path, cfg)  # same configuration: the state file wins
        wait_for(lambda: second.socket.exists(), 30, "socket")
        subs = wait_for(lambda: ctl(second, "list")[1], 10, "list")["subscriptions"]
        assert ("sim-b", "DOGE-USD") in {(s["provider"], s["instrument"]) for s in subs}
        assert second.stop() == 0

        cfg.write_text(cfg.read_text().replace('["BTC-USD", "ETH-USD"]', '["BTC-USD"]', 1))
        third = DaemonProcess(tmp_path, cfg)  # configuration edited: it wins
        wait_for(lambda: third.socket.exists(), 30, "socket")
        subs = wait_for(lambda: ctl(third, "list")[1], 10, "list")["subscriptions"]
        assert sorted((s["provider"], s["instrument"]) for s in subs) == [
            ("sim-a", "BTC-USD"), ("sim-b", "BTC-USD"), ("sim-b", "ETH-USD"),
        ]  # fmt: skip
        assert "the configuration wins" in third.stderr()
        # reload applies an edited file live and names what needs a restart
        cfg.write_text(
            cfg.read_text().replace('["BTC-USD"]', '["BTC-USD", "DOGE-USD"]', 1)
            .replace("linger_ms = 5", "linger_ms = 7")
        )  # fmt: skip
        code, res, err = ctl(third, "reload")
        assert code == 0, err
        assert res["subscribed"] == [
            {"provider": "sim-a", "venue": "SIM-AX", "instrument": "DOGE-USD"}
        ]
        assert res["restart_required"] == ["kafka"]
        good = cfg.read_text()
        cfg.write_text("[daemon]\nworkerz = 1\n")
        code, _, err = ctl(third, "reload")
        assert code == 1 and "unknown key 'daemon.workerz'" in err
        assert ctl(third, "status")[0] == 0
        # SIGHUP reloads too
        cfg.write_text(good.replace('["BTC-USD", "DOGE-USD"]', '["BTC-USD"]', 1))
        os.kill(third.pid, signal.SIGHUP)
        wait_for(
            lambda: (
                "DOGE-USD" not in {s["instrument"] for s in ctl(third, "list")[1]["subscriptions"]}
            ),
            10,
            "the SIGHUP reload",
        )
        assert third.stop() == 0
    finally:
        sims.stop()


def test_ctl_says_clearly_when_no_daemon_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "ctl", "--socket", str(tmp_path / "x.sock"), "status"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 3 and "no daemon is running" in proc.stderr
    sock = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))  # a socket file nobody listens on: what a crashed daemon leaves
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fairfeed", "ctl", "--socket", str(sock), "status"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 3 and "connection refused" in proc.stderr
    finally:
        s.close()
    os.chmod(sock, 0)
    # A user without access: a forked child drops to `nobody` (as root) and runs the client
    # in-process, so nothing but the socket's own permissions is in the way.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code, text = 99, ""
        try:
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            ctl_client.call(sock, "status", timeout=5)
        except ctl_client.CtlError as exc:
            code, text = exc.code, str(exc)
        except BaseException as exc:
            text = repr(exc)
        os.write(w, f"{code}|{text}".encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    code, _, text = os.read(r, 4096).decode().partition("|")
    os.close(r)
    assert int(code) == ctl_client.EXIT_ACCESS and "permission denied" in text, text
