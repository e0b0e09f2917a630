"""Fixed-rate benchmark: what the daemon costs at a steady load, and idle.

``python -m bench.steady [--rate R] [--seconds S] [--tree PATH ...] [--idle-only | --no-idle]
[--json OUT]``

The reference load: Binance-format trade frames (one trade per frame) from a local Binance
server in a process of its own (``fairfeed.local.loadserver``), paced at ``--rate`` trades/s
over 8 instruments and 2 connections (one per ingest worker), into ``fairfeed run`` with 2
ingest workers and a local Tansu broker. The server writes every millisecond what is due, so
frames arrive spread out as a venue's do, not in bursts.

Scenarios, per source tree:

- **steady**: after ``--warmup`` seconds of load, a ``--seconds`` window. CPU (utime + stime,
  ``/proc/<pid>/stat``) of the supervisor, each child (named from the control block's pid words)
  and any other process of the daemon's tree, in µs per message (trade) received in the window
  and in cores; Kafka ticks messages per second and records per message (read back from the
  topic, messages whose CreateTime is in the window); frame received → ``produce()`` latency
  percentiles (per record: the ticks message's CreateTime, set at ``produce()`` with ms
  resolution, minus the record's ``ts_receive``). Then the trades stop and every trade id the
  server generated is looked for in the topic: a shortfall or a duplicate is reported.
- **idle**: subscribed, the server sends no trades (pings only); CPU of the whole daemon over
  ``--seconds``, in % of a core.

``--tree`` runs the daemon from another source tree (say ``git worktree add /tmp/main main``)
with this tree's harness; give it several times (``--tree . --tree /tmp/main``) to measure the
trees alternately in one session, ``--repeat`` times. Results are printed as a table and written
as JSON (``--json``, default ``.benchmarks/steady-<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from bench.e2e import CLK_TCK, process_tree
from fairfeed.core.counters import Slot
from fairfeed.core.records import KIND_TRADE
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.shm import list_segments
from fairfeed.kafka.broker import LocalBroker, ensure_topics, free_port, read_topic
from fairfeed.local.loadserver import SYMBOLS, LoadServer
from tests.daemon.daemon_process import DaemonProcess
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
MAX_INSTRUMENTS = 4096  # the daemon's default registry capacity (sizes the control block)
SERVER_TICK = 0.001  # the load server writes what is due every millisecond


@dataclass
class Run:
    scenario: str  # steady | idle
    tree: str
    run: int
    rate: float = 0.0
    seconds: float = 0.0  # measured window (wall)
    messages: int = 0  # trades the daemon received in the window (its ingest FRAMES_IN)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process, in the window
    cpu_us_per_message: dict[str, float] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)
    kafka_messages_per_s: float = 0.0  # ticks messages produced in the window
    records_per_message: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # receive -> produce()
    # exchange time (the server's, when it generated the trade) -> produce(): includes the
    # server's pacing and any time the frame waited in the socket before it was read
    latency_exchange_ms: dict[str, float] = field(default_factory=dict)
    expected: int = 0  # trades the server generated
    delivered: int = 0  # distinct trades found in the ticks topic
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total_cores(self) -> float:
        return sum(self.cores.values())


def _config(bootstrap: str, url: str, ticks: str, fair: str, extra: str) -> str:
    return f"""
[daemon]
workers = {WORKERS}
live_view = "off"
log_level = "WARNING"
[kafka]
bootstrap = "{bootstrap}"
create_topics = true
ticks_topic = "{ticks}"
fair_topic = "{fair}"
client_id = "bench-steady"
[metrics]
listen = "127.0.0.1:{free_port()}"
[[providers]]
name = "binance"
kind = "binance"
venue = "BINANCE"
url = "{url}"
[[subscriptions]]
provider = "binance"
instruments = {orjson.dumps(list(SYMBOLS)).decode()}
{extra}
"""


class _Daemon:
    """The daemon under test and its control block."""

    def __init__(self, workdir: Path, conf: Path, tree: Path) -> None:
        self.proc = DaemonProcess(workdir, conf, tree=None if tree == REPO else tree)
        self.control: ControlBlock | None = None

    def ready(self) -> bool:
        p = self.proc
        if p.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {p.proc.returncode}:\n{p.stderr()[-3000:]}")
        if self.control is None:
            name = f"fairfeed-{p.pid}-control"
            if name not in list_segments(name):
                return False
            self.control = ControlBlock.attach(name, WORKERS + 1, MAX_INSTRUMENTS)
        c = self.control
        return all(c.get(s, Slot.READY) for s in range(WORKERS + 1)) and all(
            c.get(s, Slot.CONNECTED) for s in range(WORKERS)
        )

    def get(self, slot: int, what: Slot) -> int:
        assert self.control is not None
        return self.control.get(slot, what)

    def frames(self) -> int:
        return sum(self.get(s, Slot.FRAMES_IN) for s in range(WORKERS))

    def names(self) -> dict[int, str]:
        """pid -> role for every process of the daemon's tree."""
        names = {self.proc.pid: "supervisor"}
        for s in range(WORKERS + 1):
            names[self.get(s, Slot.PID)] = f"ingest-{s}" if s < WORKERS else "compute"
        return {pid: names.get(pid, "other") for pid in process_tree(self.proc.pid)}

    def stop(self) -> list[str]:
        notes = []
        if self.control is not None:
            self.control.close()
            self.control = None
        code = self.proc.stop()
        if code != 0:
            notes.append(f"daemon exit code {code}: {self.proc.stderr()[-1500:]}")
        left = self.proc.leftovers()
        if left:
            notes.append("left behind: " + ", ".join(left))
        return notes


def _cpu(pids: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, role in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                v = f.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[role] = out.get(role, 0.0) + (int(v[11]) + int(v[12])) / CLK_TCK
    return out


def _window(daemon: _Daemon, seconds: float) -> tuple[dict[str, float], int, float, int, int]:
    """CPU seconds per role, messages received, wall seconds, window start and end (ms)."""
    pids = daemon.names()
    cpu0, f0, t0, w0 = _cpu(pids), daemon.frames(), time.monotonic(), time.time_ns() // 10**6
    time.sleep(seconds)  # a benchmark window, not a wait for something
    cpu1, f1, t1, w1 = _cpu(pids), daemon.frames(), time.monotonic(), time.time_ns() // 10**6
    cpu = {r: cpu1[r] - cpu0.get(r, 0.0) for r in cpu1}
    return cpu, f1 - f0, t1 - t0, w0, w1


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    pct = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99, 99.9)}
    return pct | {"max": float(ms.max())}


def _read_ticks(bootstrap: str, topic: str, w0: int, w1: int, res: Run) -> None:
    """Records per message, messages/s and latency in [w0, w1] (ms); every trade id found."""
    seen: dict[str, list[np.ndarray]] = {}
    msgs = recs = 0
    lat: list[np.ndarray] = []
    lat_x: list[np.ndarray] = []
    for msg in read_topic(bootstrap, topic, group=f"bench-{topic}", timeout=120, batch=10_000):
        v = orjson.loads(msg.value())
        kind = np.asarray(v["kind"])
        seen.setdefault(v["instrument"], []).append(np.asarray(v["sequence"])[kind == KIND_TRADE])
        ts = msg.timestamp()[1]
        if w0 <= ts < w1:
            msgs += 1
            recs += v["count"]
            lat.append(ts - np.asarray(v["ts_receive"], np.int64) / 1e6)
            lat_x.append(ts - np.asarray(v["ts_exchange"], np.int64) / 1e6)
    res.kafka_messages_per_s = msgs / max(res.seconds, 1e-9)
    res.records_per_message = recs / max(msgs, 1)
    if lat:
        ms = np.concatenate(lat)
        res.latency_ms = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99, 99.9)} | {
            "max": float(ms.max())
        }
    for ids in seen.values():
        a = np.concatenate(ids)
        res.delivered += len(np.unique(a))
        res.duplicates += len(a) - len(np.unique(a))


def run_once(
    scenario: str, tree: Path, index: int, broker: LocalBroker, a: Options, tmp: Path
) -> Run:
    """One daemon from ``tree`` under one scenario, with a fresh load server and topics."""
    res = Run(scenario, str(tree), index, rate=a.rate if scenario == "steady" else 0.0)
    tag = f"steady-{os.getpid()}-{scenario}-{index}-{abs(hash(str(tree))) % 10000}"
    ticks, fair = f"{tag}.ticks", f"{tag}.fair"
    ensure_topics(broker.bootstrap, [ticks, fair], 3)
    server = LoadServer(a.rate, tick=SERVER_TICK, paused=scenario == "idle")
    workdir = tmp / tag
    workdir.mkdir()
    conf = workdir / "f.toml"
    conf.write_text(_config(broker.bootstrap, server.url, ticks, fair, a.extra))
    daemon = _Daemon(workdir, conf, tree)
    try:
        try:
            # a tree run for the first time compiles its kernels first: minutes on a busy machine
            wait_for(daemon.ready, 300, "the daemon ready and connected")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its stderr:\n{daemon.proc.stderr()[-3000:]}") from None
        if scenario == "steady":
            wait_for(lambda: daemon.get(WORKERS, Slot.KAFKA_DELIVERED) > 0, 60, "first output")
        time.sleep(a.warmup)  # warm-up: connections settled, caches and the producer warm
        cpu, msgs, res.seconds, w0, w1 = _window(daemon, a.seconds)
        res.messages = msgs
        if scenario == "steady" and msgs < 0.95 * a.rate * res.seconds:
            res.notes.append(f"received {msgs / res.seconds:.0f} trades/s of {a.rate:.0f}: the "
                             "load server fell behind (machine overloaded?)")  # fmt: skip
        res.cpu_s = cpu
        res.cores = {r: c / res.seconds for r, c in cpu.items()}
        if msgs:
            res.cpu_us_per_message = {r: c * 1e6 / msgs for r, c in cpu.items()}
            res.cpu_us_per_message["total"] = sum(cpu.values()) * 1e6 / msgs
        if scenario == "steady":
            server.pause(True)
            res.expected = sum(server.ids().values())
            wait_for(
                lambda: sum(daemon.get(s, Slot.RECORDS_IN) for s in range(WORKERS)) >= res.expected,
                60,
                "every trade received",
            )
            wait_for(
                lambda: (
                    daemon.get(WORKERS, Slot.RECORDS_OUT) >= res.expected
                    and daemon.get(WORKERS, Slot.SPOOL_MESSAGES) == 0
                ),
                60,
                "every trade produced and acknowledged",
            )
        for s, what in ((s, w) for s in range(WORKERS) for w in (Slot.RING_DROPPED,)):
            if daemon.get(s, what):
                res.notes.append(f"ingest-{s} {what.name} = {daemon.get(s, what)}")
    finally:
        res.notes += daemon.stop()
        server.stop()
    if scenario == "steady":
        _read_ticks(broker.bootstrap, ticks, w0, w1, res)
        if res.delivered != res.expected:
            res.notes.append(f"SHORTFALL: {res.expected - res.delivered} trades not in Kafka")
        if res.duplicates:
            res.notes.append(f"DUPLICATES: {res.duplicates}")
    return res


ROLES = ("supervisor", "ingest-0", "ingest-1", "compute", "other")


def format_table(runs: list[Run]) -> str:
    lines = []
    steady = [r for r in runs if r.scenario == "steady"]
    if steady:
        head = (
            f"{'tree':<28} {'run':>3} {'msg/s':>7} "
            + " ".join(f"{r[:9]:>9}" for r in ROLES)
            + f" {'total':>7} {'cores':>6} {'kmsg/s':>7} {'rec/msg':>7} {'p50ms':>6} {'p99ms':>6}"
        )
        lines += ["steady: CPU µs per message received, per process", head, "-" * len(head)]
        for r in steady:
            u = r.cpu_us_per_message
            lines.append(
                f"{_short(r.tree):<28} {r.run:>3} {r.messages / r.seconds:>7.0f} "
                + " ".join(f"{u.get(k, 0.0):>9.2f}" for k in ROLES)
                + f" {u.get('total', 0.0):>7.2f} {r.total_cores:>6.3f}"
                f" {r.kafka_messages_per_s:>7.0f} {r.records_per_message:>7.1f}"
                f" {r.latency_ms.get('p50', 0):>6.1f} {r.latency_ms.get('p99', 0):>6.1f}"
            )
    idle = [r for r in runs if r.scenario == "idle"]
    if idle:
        head = f"{'tree':<28} {'run':>3} " + " ".join(f"{r[:9]:>9}" for r in ROLES) + "  total"
        lines += ["", "idle: % of a core per process", head, "-" * len(head)]
        for r in idle:
            lines.append(
                f"{_short(r.tree):<28} {r.run:>3} "
                + " ".join(f"{100 * r.cores.get(k, 0.0):>9.2f}" for k in ROLES)
                + f"  {100 * r.total_cores:.2f}"
            )
    for r in runs:
        for n in r.notes:
            lines.append(f"note [{r.scenario} {_short(r.tree)} run {r.run}]: {n}")
    return "\n".join(lines)


def _short(tree: str) -> str:
    return tree if len(tree) <= 28 else "…" + tree[-27:]


def summarize(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Medians per (scenario, tree)."""
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys((r.scenario, r.tree) for r in runs):
        rs = [r for r in runs if (r.scenario, r.tree) == key]
        s = {"total_cores": statistics.median(r.total_cores for r in rs)}
        if key[0] == "steady":
            for role in (*ROLES, "total"):
                s[f"us_per_message_{role}"] = statistics.median(
                    r.cpu_us_per_message.get(role, 0.0) for r in rs
                )
            s["records_per_message"] = statistics.median(r.records_per_message for r in rs)
            s["latency_p99_ms"] = statistics.median(r.latency_ms.get("p99", 0.0) for r in rs)
        out[f"{key[0]} {key[1]}"] = s
    return out


@dataclass(frozen=True)
class Options:
    rate: float = 28_000.0  # trades/s over all connections
    seconds: float = 20.0  # measured window per run
    warmup: float = 3.0  # seconds of load before the window
    extra: str = ""  # TOML appended to the daemon's configuration


def run_steady(
    opts: Options,
    trees: list[Path] | None = None,
    repeat: int = 1,
    scenarios: tuple[str, ...] = ("steady", "idle"),
    out: Path | None = None,
    echo: bool = True,
) -> dict:
    """Every scenario for every tree, ``repeat`` times (trees alternate); the report (also
    written as JSON to ``out``, default ``.benchmarks/steady-<timestamp>.json``)."""
    trees = [t.resolve() for t in trees] if trees else [REPO]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="fairfeed-steady-") as tmp, LocalBroker() as broker:
        for i in range(repeat):
            for scenario in scenarios:
                for tree in trees:
                    if echo:
                        print(f"run {i}: {scenario}, {tree}", flush=True)
                    runs.append(run_once(scenario, tree, i, broker, opts, Path(tmp)))
    report = {
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "options": asdict(opts) | {"trees": [str(t) for t in trees], "repeat": repeat},
        "runs": [asdict(r) | {"total_cores": r.total_cores} for r in runs],
        "summary": summarize(runs),
    }
    path = out or REPO / ".benchmarks" / f"steady-{report['timestamp']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    report["path"] = str(path)
    if echo:
        print()
        print(format_table(runs))
        print(f"\nJSON: {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    d = Options()
    ap = argparse.ArgumentParser(prog="python -m bench.steady", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=d.rate, help="trades/s over all connections")
    ap.add_argument("--seconds", type=float, default=d.seconds, help="measured window per run")
    ap.add_argument("--warmup", type=float, default=d.warmup, help="seconds of load first")
    ap.add_argument("--tree", type=Path, action="append", help="source tree(s) of the daemon")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tree (trees alternate)")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle scenario")
    ap.add_argument("--idle-only", action="store_true", help="only the idle scenario")
    ap.add_argument("--extra", default="", help="TOML appended to the daemon's configuration")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    scenarios = ("idle",) if a.idle_only else ("steady",) + (() if a.no_idle else ("idle",))
    opts = Options(a.rate, a.seconds, a.warmup, a.extra)
    report = run_steady(opts, a.tree, a.repeat, scenarios, a.json)
    bad = [
        r
        for r in report["runs"]
        if any(n.startswith(("SHORTFALL", "DUPL", "daemon exit", "left")) for n in r["notes"])
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
