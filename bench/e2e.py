"""End-to-end benchmark: the daemon against the naive baseline, same workload, same broker.

``python -m bench.e2e [--events N] [--seconds S] [--repeat R] [--workers W]``

One local broker (Tansu) serves the whole run. For each pipeline, fresh simulated providers run
in a separate process (their CPU counts against neither pipeline), at full speed with a fixed
workload: every connection receives exactly ``max_events`` events. To keep the simulators from
being the bottleneck and to keep start-up out of the measurement, they *pre-generate* each
connection's events once it has subscribed (the simulator's ``gate`` option) and hold them
behind a gate; the harness opens the gate once the pipeline is up and every connection is
subscribed, so the measured window holds nothing but the data flow.

Measured per pipeline:

- **records/s**: tick records in Kafka divided by the span between the first and the last ticks
  message's timestamp (CreateTime, set by the producer at ``produce()``, ms resolution). This is
  measured the same way for both pipelines, outside either of them, and bounded by the data
  itself (not by the harness's polling interval or the pipeline's start-up). ``wall_gate_s``
  (gate opened → every record produced and acknowledged, polled every 20 ms) is reported too
  as a cross-check.
- **CPU µs/record**: utime+stime (``/proc/<pid>/stat``) summed over the pipeline's whole process
  tree (daemon: supervisor + ingest workers + compute; baseline: its one process) between a
  snapshot just before the gate opens and one after the last record was acknowledged, divided
  by the records. The broker and the simulators are excluded (their CPU is reported apart).
- **Delivery**: every ticks message is read back from Kafka; records are counted, duplicates
  (same provider, instrument, sequence, kind) detected, and the total compared with what the
  simulators wrote. A shortfall is reported, never hidden.

Workload shapes (``--shape``, several allowed; default all three):

- ``sim``: three simulated providers, frames of ``--batch`` (10) events, half trades half quotes;
  daemon and baseline alternate.
- ``binance``: the local Binance server, one trade per frame (Binance's ``@trade`` stream), four
  instruments; daemon and baseline alternate. Target: >= 650k records/s for the daemon.
- ``coinbase``: the local Coinbase Advanced Trade server, ``market_trades`` updates of 50 trades
  (one product per connection, so a frame holds one product's run of trades); the daemon only
  (the naive baseline reads no Coinbase). Target: >= 950k records/s.

The servers run in one process apart from the pipeline's, on the same 2 cores.

The results are printed as a table with the ratio daemon/baseline and the targets, and written
as JSON to ``.benchmarks/e2e-<timestamp>.json``. See bench/README.md for the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fairfeed.core.config import KafkaConfig, SimulatorConfig
from fairfeed.core.counters import Slot
from fairfeed.core.partition import worker_for
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.shm import list_segments
from fairfeed.kafka.broker import LocalBroker, ensure_topics, read_topic
from fairfeed.local.binance import BinanceServer
from fairfeed.local.coinbase import CoinbaseServer
from fairfeed.local.simulator import SimulatorServer
from tests.waiting import poll, wait_for

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.02  # seconds between progress checks in the measured window
REPEAT = 3  # default daemon/baseline pairs: the reported ratio is the median of the pairs
MAX_INSTRUMENTS = 4096  # the daemon's default registry capacity (sizes the control block)

INSTRUMENTS = {"BTC-USD": 64000.0, "ETH-USD": 3200.0, "SOL-USD": 150.0, "XRP-USD": 0.6}
PROVIDERS = (  # name, venue, price offset (bps), seed
    ("sim-alpha", "ALPHAX", -4.0, 1),
    ("sim-beta", "BETAX", 3.0, 2),
    ("sim-gamma", "GAMMAX", 8.0, 3),
)
KIND_CODES = {"trade": 1, "bid": 2, "ask": 3}
SHAPES = ("sim", "binance", "coinbase")
# one provider per venue shape: name, provider kind, venue, instruments
VENUE_SHAPES = {
    "binance": ("binance", "binance", "BINANCE", ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT")),
    "coinbase": ("coinbase", "coinbase", "COINBASE", ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD")),
}
COINBASE_TRADES_PER_FRAME = 50
TARGETS = {"binance": 650_000.0, "coinbase": 950_000.0}  # daemon records/s, issue 12


@dataclass(frozen=True)
class Workload:
    events: int = 1_200_000  # events over all connections of one pipeline run
    batch: int = 10  # events per frame
    quote_ratio: float = 0.5
    workers: int = 2  # daemon ingest workers (the baseline mirrors its connections)
    seconds: float = 120.0  # per pipeline: give up waiting for the workload after this (the
    # naive baseline takes ~40 s for 1.2M one-trade Binance frames)
    shape: str = "sim"  # one of SHAPES
    extra: str = ""  # TOML appended to the daemon's configuration

    def connections(self) -> int:
        """Connections either pipeline opens: one per (provider, ingest partition); one per
        instrument for Coinbase (``max_streams_per_connection = 1``)."""
        if self.shape == "coinbase":
            return len(VENUE_SHAPES["coinbase"][3])
        if self.shape == "binance":
            name, _, venue, insts = VENUE_SHAPES["binance"]
            return len({worker_for(name, f"{venue}:{i}", self.workers) for i in insts})
        return len(
            {
                (p, worker_for(p, f"{venue}:{inst}", self.workers))
                for p, venue, *_ in PROVIDERS
                for inst in INSTRUMENTS
            }
        )

    def frame_events(self) -> int:
        """Events per frame."""
        return {"sim": self.batch, "binance": 1, "coinbase": COINBASE_TRADES_PER_FRAME}[self.shape]

    def per_connection(self) -> int:
        n = max(1, math.ceil(self.events / self.connections()))
        return n + (-n % self.frame_events())  # whole frames

    def sim_specs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, server kind, SimulatorConfig fields) per server."""
        if self.shape != "sim":
            name, kind, _venue, insts = VENUE_SHAPES[self.shape]
            prices = {i: INSTRUMENTS.get(i.replace("-USDT", "-USD"), 100.0) for i in insts}
            return [
                (
                    name,
                    kind,
                    {
                        "prices": prices,
                        "rate": 0.0,
                        "quote_ratio": 0.0,  # trades: the shape is the trade frames
                        "heartbeat_interval": 1.0,
                        "max_events": self.per_connection(),
                        "seed": 1,
                    },
                )
            ]
        return [
            (
                name,
                "simulator",
                {
                    "prices": dict(INSTRUMENTS),
                    "rate": 0.0,
                    "batch": self.batch,
                    "quote_ratio": self.quote_ratio,
                    "price_offset_bps": offset,
                    "heartbeat_interval": 1.0,
                    "max_events": self.per_connection(),
                    "seed": seed,
                },
            )
            for name, _venue, offset, seed in PROVIDERS
        ]


def _server(name: str, kind: str, cfg: SimulatorConfig, gate: asyncio.Event):
    """A gated local server of ``kind`` (see :meth:`Workload.sim_specs`)."""
    if kind == "binance":
        server = BinanceServer(name, cfg, gate=gate)
        # one trade per frame: the library's send() per frame would make the server the
        # bottleneck, so the pre-generated frames are written as they are
        server.write_frames = True
        return server
    if kind == "coinbase":
        server = CoinbaseServer(name, cfg, feed="advanced", gate=gate)
        # a gated connection is written in chunks of this many events: with one product per
        # connection, one market_trades update of 50 trades per chunk
        server.fast_chunk = COINBASE_TRADES_PER_FRAME
        return server
    return SimulatorServer(name, cfg, gate=gate)


# --- simulators in their own process -------------------------------------------------------


def _sims_main(pipe, specs: list[tuple[str, str, dict[str, Any]]]) -> None:
    asyncio.run(_sims_async(pipe, specs))


async def _sims_async(pipe, specs) -> None:
    loop = asyncio.get_running_loop()
    gate, stop = asyncio.Event(), asyncio.Event()
    # A gated simulator pre-generates each connection's max_events once it has subscribed and
    # writes them as fast as the client drains once the gate opens (see fairfeed.local.wsserver).
    servers = [_server(name, kind, SimulatorConfig(**kw), gate) for name, kind, kw in specs]
    for s in servers:
        await s.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def status() -> dict[str, Any]:
        st = [s.stats for s in servers]
        return {
            "prepared": sum(x.prepared for x in st),
            "finished": sum(x.finished for x in st),
            "connections_open": sum(x.connections_open for x in st),
            "connections_total": sum(x.connections_total for x in st),
            "events": sum(x.events for x in st),
            "records": sum(x.records for x in st),
            "frames": sum(x.frames for x in st),
        }

    def on_command() -> None:
        try:
            cmd = pipe.recv()
        except (EOFError, OSError):
            stop.set()
            return
        if cmd == "go":
            gate.set()
            pipe.send("ok")
        elif cmd == "status":
            pipe.send(status())
        else:
            stop.set()

    loop.add_reader(pipe.fileno(), on_command)
    pipe.send({s.name: s.url for s in servers})
    await stop.wait()
    loop.remove_reader(pipe.fileno())
    for s in servers:
        await s.stop()


class SimProcess:
    """The simulators of one pipeline run, in a spawned process."""

    def __init__(self, specs: list[tuple[str, str, dict[str, Any]]], timeout: float = 30.0) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_sims_main, args=(child, specs), daemon=True)
        self.proc.start()
        child.close()
        self.urls: dict[str, str] = self._recv(timeout)

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def _recv(self, timeout: float) -> Any:
        if not self._pipe.poll(timeout):
            raise RuntimeError(f"simulator process did not answer within {timeout}s")
        return self._pipe.recv()

    def status(self) -> dict[str, Any]:
        self._pipe.send("status")
        return self._recv(10)

    def go(self) -> None:
        self._pipe.send("go")
        self._recv(10)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send("stop")
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._pipe.close()


# --- CPU accounting ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (scan of /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                parent[int(entry)] = int(f[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        tree.extend(frontier)
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime per pid, seconds (processes that are gone are left out)."""
    out = {}
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            out[pid] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before.get(p, 0.0) for p in after)


def alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


# --- reading back from Kafka ---------------------------------------------------------------


@dataclass
class Delivered:
    messages: int = 0
    records: int = 0
    duplicates: int = 0
    first_ts_ms: int = 0
    last_ts_ms: int = 0


def read_ticks(bootstrap: str, topic: str, columnar: bool, timeout: float = 120.0) -> Delivered:
    """Count the tick records of ``topic`` (reading every partition to its EOF), detect
    duplicates and the first/last message timestamps."""
    out = Delivered()
    # per (provider, instrument): sequence * 4 + kind of every record, to find duplicates
    arrays: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    ints: dict[tuple[str, str], list[int]] = defaultdict(list)
    first, last = None, None
    for msg in read_topic(bootstrap, topic, group=f"bench-{topic}", timeout=timeout, batch=10_000):
        ts = msg.timestamp()[1]
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        v = orjson.loads(msg.value())
        out.messages += 1
        if columnar:
            seq = np.asarray(v["sequence"], np.int64)
            arrays[(v["provider"], v["instrument"])].append(
                seq * 4 + np.asarray(v["kind"], np.int64)
            )
            out.records += v["count"]
        else:
            ints[(v["provider"], v["instrument"])].append(v["sequence"] * 4 + KIND_CODES[v["kind"]])
            out.records += 1
    for src in set(arrays) | set(ints):
        allk = np.concatenate([*arrays.get(src, []), np.asarray(ints.get(src, []), np.int64)])
        out.duplicates += len(allk) - len(np.unique(allk))
    out.first_ts_ms, out.last_ts_ms = first or 0, last or 0
    return out


def count_messages(bootstrap: str, topic: str, timeout: float = 60.0) -> int:
    """Number of messages in ``topic`` (read to EOF; values not parsed)."""
    group = f"bench-{topic}"
    return sum(1 for _ in read_topic(bootstrap, topic, group=group, timeout=timeout, batch=10_000))


# --- one pipeline run ----------------------------------------------------------------------


@dataclass
class Result:
    pipeline: str
    run: int
    shape: str = "sim"
    expected_records: int = 0  # what the simulators wrote
    records: int = 0  # tick records read back from Kafka
    missing: int = 0  # expected - distinct records in Kafka (> 0: a shortfall)
    duplicates: int = 0
    fair_messages: int = 0
    events: int = 0
    connections: int = 0  # connections the simulators accepted (expected: Workload.connections)
    wall_s: float = 0.0  # first → last ticks message (Kafka timestamps)
    wall_gate_s: float = 0.0  # gate opened → all records produced and acknowledged (polled)
    records_per_s: float = 0.0
    cpu_s: float = 0.0  # pipeline process tree, measured window
    cpu_us_per_record: float = 0.0
    sims_cpu_s: float = 0.0  # simulators' process, same window
    broker_cpu_s: float = 0.0  # broker, same window
    completed: bool = False  # every record produced and acknowledged before the deadline
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)


def _config_text(
    bootstrap: str,
    urls: dict[str, str],
    ticks: str,
    fair: str,
    workers: int,
    client: str,
    shape: str = "sim",
) -> str:
    lines = [
        "[daemon]",
        f"workers = {workers}",
        'live_view = "off"',
        'log_level = "WARNING"',
        "",
        "[kafka]",
        f'bootstrap = "{bootstrap}"',
        "create_topics = true",
        f'ticks_topic = "{ticks}"',
        f'fair_topic = "{fair}"',
        f'client_id = "{client}"',
        "",
    ]
    if shape != "sim":
        name, kind, venue, insts = VENUE_SHAPES[shape]
        lines += ["[[providers]]", f'name = "{name}"', f'kind = "{kind}"', f'venue = "{venue}"',
                  f'url = "{urls[name]}"']  # fmt: skip
        if shape == "coinbase":
            lines += ['feed = "advanced"', "max_streams_per_connection = 1"]
        quoted = ", ".join(f'"{i}"' for i in insts)
        return "\n".join([*lines, "", "[[subscriptions]]", f'provider = "{name}"',
                          f"instruments = [{quoted}]", ""])  # fmt: skip
    for name, venue, *_ in PROVIDERS:
        lines += [
            "[[providers]]",
            f'name = "{name}"',
            'kind = "simulator"',
            f'venue = "{venue}"',
            f'url = "{urls[name]}"',
            "",
        ]
    for name, *_ in PROVIDERS:
        insts = ", ".join(f'"{i}"' for i in INSTRUMENTS)
        lines += ["[[subscriptions]]", f'provider = "{name}"', f"instruments = [{insts}]", ""]
    return "\n".join(lines)


class _DaemonPipeline:
    name = "daemon"

    def __init__(self, cfg_path: Path, workdir: Path, workers: int, n_instruments: int) -> None:
        self.workers = workers
        self.err = open(workdir / "daemon.err", "wb")  # noqa: SIM115 - closed in stop()
        # state (spool, subscriptions) and runtime files of this run's own: the defaults under
        # ~/.local/state are shared with every other daemon on the machine, and a spool in use
        # stops a second daemon at start
        own = Path(tempfile.mkdtemp(prefix="daemon-", dir=workdir))
        env = dict(os.environ, XDG_STATE_HOME=str(own / "state"), XDG_RUNTIME_DIR=str(own / "run"))
        for key in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET"):
            env.pop(key, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fairfeed", "run", "--config", str(cfg_path), "--no-live"],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            cwd=REPO,
            env=env,
        )
        self.err_path = workdir / "daemon.err"
        self.control: ControlBlock | None = None
        self.n_instruments = n_instruments
        self.pids: set[int] = set()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
        if self.control is None:
            name = f"fairfeed-{self.proc.pid}-control"
            if name not in list_segments(name):
                return False
            self.control = ControlBlock.attach(name, self.workers + 1, self.n_instruments)
        return all(self.control.get(s, Slot.READY) for s in range(self.workers + 1))

    def tree(self) -> list[int]:
        pids = process_tree(self.proc.pid)
        self.pids.update(pids)
        return pids

    def progress(self) -> tuple[int, int]:
        """(records produced to Kafka, messages still queued in the producer)."""
        assert self.control is not None
        c = self.workers  # compute is the last slot
        return self.control.get(c, Slot.RECORDS_OUT), self.control.get(c, Slot.KAFKA_QUEUE)

    def counters(self) -> dict[str, int]:
        if self.control is None:
            return {}
        w = range(self.workers)
        c = self.workers
        g = self.control.get
        return {
            "ingest_records": sum(g(i, Slot.RECORDS_OUT) for i in w),
            "ring_dropped": sum(g(i, Slot.RING_DROPPED) for i in w),
            "parse_errors": sum(g(i, Slot.PARSE_ERRORS) for i in w),
            "reconnects": sum(g(i, Slot.RECONNECTS) for i in w),
            "compute_records": g(c, Slot.RECORDS_OUT),
            "fair_out": g(c, Slot.FAIR_OUT),
            "kafka_delivered": g(c, Slot.KAFKA_DELIVERED),
            "kafka_errors": g(c, Slot.KAFKA_ERRORS),
            "kafka_dropped": g(c, Slot.KAFKA_DROPPED),
        }

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int | None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.proc.poll() is None:
            self.tree()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in self.tree():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)
        self.err.close()
        return self.proc.returncode

    def leftovers(self, grace: float = 3.0) -> list[str]:
        poll(lambda: not self._left(), grace)
        return self._left()

    def _left(self) -> list[str]:
        left = [f"process {p}" for p in sorted(self.pids) if alive(p)]
        return left + [f"/dev/shm/{n}" for n in list_segments(f"fairfeed-{self.proc.pid}-")]


class _BaselinePipeline:
    name = "baseline"

    def __init__(self, cfg_path: Path, workdir: Path) -> None:
        self.err_path = workdir / "baseline.err"
        self.err = open(self.err_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.baseline",
                "-c",
                str(cfg_path),
                "--status-interval",
                "0.05",
            ],
            stdout=subprocess.PIPE,
            stderr=self.err,
            cwd=REPO,
        )
        self.status: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pids: set[int] = {self.proc.pid}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.status = json.loads(line)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"baseline exited with {self.proc.returncode}:\n{self.stderr()}")
        return bool(self.status)  # the first status line: connections are being opened

    def tree(self) -> list[int]:
        pids = process_tree(self.proc.pid)
        self.pids.update(pids)
        return pids

    def progress(self) -> tuple[int, int]:
        s = self.status
        return s.get("records", 0), s.get("queue", 0)

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.status.items() if k != "final"}

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self.err.close()
        return self.proc.returncode

    def leftovers(self, grace: float = 3.0) -> list[str]:
        poll(lambda: not self._left(), grace)
        return self._left()

    def _left(self) -> list[str]:
        return [f"process {p}" for p in sorted(self.pids) if alive(p)]


def run_pipeline(
    kind: str, broker: LocalBroker, wl: Workload, workdir: Path, run_id: str, index: int
) -> Result:
    """Fresh simulators, one pipeline, the measured window, stop, read back from Kafka."""
    res = Result(kind, index, wl.shape)
    tag = f"{run_id}-{wl.shape}-{index}-{kind}"
    ticks, fair = f"{tag}.ticks", f"{tag}.fair"
    ensure_topics(broker.bootstrap, [ticks, fair], KafkaConfig().topic_partitions)
    sims = SimProcess(wl.sim_specs())
    pipe: _DaemonPipeline | _BaselinePipeline | None = None
    try:
        cfg_path = workdir / f"{tag}.toml"
        cfg_path.write_text(
            _config_text(
                broker.bootstrap, sims.urls, ticks, fair, wl.workers, f"bench-{kind}", wl.shape
            )
            + wl.extra
        )
        if kind == "daemon":
            pipe = _DaemonPipeline(cfg_path, workdir, wl.workers, MAX_INSTRUMENTS)
        else:
            pipe = _BaselinePipeline(cfg_path, workdir)
        n_conns = wl.connections()
        wait_for(pipe.ready, 60, f"{kind} to start")
        wait_for(
            lambda: sims.status()["prepared"] >= n_conns,
            120,
            f"{n_conns} subscribed connections with their events generated",
        )
        time.sleep(0.2)  # let start-up work settle before the first snapshot
        pids = pipe.tree()
        cpu0 = cpu_seconds(pids)
        side0 = cpu_seconds([sims.pid, broker.pid or 0])
        t0 = time.monotonic()
        sims.go()
        deadline = t0 + wl.seconds
        expected = None
        last_progress, last_change = -1, t0
        while True:
            now = time.monotonic()
            if expected is None:
                st = sims.status()
                if st["finished"] >= n_conns:
                    expected = st["records"]
            produced, queued = pipe.progress()
            if expected is not None and produced >= expected and queued == 0:
                res.completed = True
                break
            if produced != last_progress:
                last_progress, last_change = produced, now
            if now > deadline:
                res.notes.append(f"deadline of {wl.seconds:.0f}s reached")
                break
            if expected is not None and now - last_change > 5.0:
                res.notes.append("no progress for 5 s after the simulators finished")
                break
            if pipe.proc.poll() is not None:
                res.notes.append(f"{kind} exited early with {pipe.proc.returncode}")
                break
            time.sleep(POLL)
        t1 = time.monotonic()
        cpu1 = cpu_seconds(pids)
        side1 = cpu_seconds([sims.pid, broker.pid or 0])
        res.wall_gate_s = t1 - t0
        res.cpu_s = cpu_delta(cpu0, cpu1)
        res.sims_cpu_s = side1.get(sims.pid, 0.0) - side0.get(sims.pid, 0.0)
        if broker.pid:
            res.broker_cpu_s = side1.get(broker.pid, 0.0) - side0.get(broker.pid, 0.0)
        st = sims.status()
        res.expected_records, res.events = st["records"], st["events"]
        res.connections = st["connections_total"]
        if res.connections != n_conns:
            res.notes.append(f"simulators accepted {res.connections} connections, not {n_conns}")
        counters = pipe.counters()
    finally:
        code = pipe.stop() if pipe is not None else None
        sims.stop()
    res.exit_code = code
    if code != 0:
        res.notes.append(f"{kind} exit code {code}: {pipe.stderr()[-1500:]}")
    left = pipe.leftovers()
    if left:
        res.notes.append("left behind: " + ", ".join(left))
    if kind == "daemon":
        for key in ("ring_dropped", "parse_errors", "reconnects", "kafka_errors", "kafka_dropped"):
            if counters.get(key):
                res.notes.append(f"daemon {key} = {counters[key]}")
    elif counters.get("errors"):
        res.notes.append(f"baseline delivery errors = {counters['errors']}")

    got = read_ticks(broker.bootstrap, ticks, columnar=kind == "daemon")
    res.records, res.duplicates = got.records, got.duplicates
    res.missing = res.expected_records - (got.records - got.duplicates)
    if res.missing:
        res.notes.append(f"SHORTFALL: {res.missing} records written by the simulators not in Kafka")
    if res.duplicates:
        res.notes.append(f"DUPLICATES: {res.duplicates} records more than once in Kafka")
    res.fair_messages = count_messages(broker.bootstrap, fair)
    span = max(got.last_ts_ms - got.first_ts_ms, 1) / 1000.0
    res.wall_s = span
    res.records_per_s = got.records / span
    res.cpu_us_per_record = res.cpu_s * 1e6 / max(got.records, 1)
    return res


# --- the whole run -------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(results: list[Result]) -> dict[str, Any]:
    """Per shape and pipeline medians over repetitions, and daemon/baseline ratios (per
    repetition and the median of those)."""
    out: dict[str, Any] = {}
    for shape in dict.fromkeys(r.shape for r in results):
        out[shape] = _summarize_shape([r for r in results if r.shape == shape])
        if shape in TARGETS and "daemon" in out[shape]:
            out[shape]["target_records_per_s"] = TARGETS[shape]
    return out


def _summarize_shape(results: list[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("daemon", "baseline"):
        rs = [r for r in results if r.pipeline == kind]
        if rs:
            out[kind] = {
                "records_per_s": statistics.median(r.records_per_s for r in rs),
                "cpu_us_per_record": statistics.median(r.cpu_us_per_record for r in rs),
            }
    pairs = [
        (d, b)
        for d in results
        if d.pipeline == "daemon"
        for b in results
        if b.pipeline == "baseline" and b.run == d.run
    ]
    if pairs:
        rate = [_ratio(d.records_per_s, b.records_per_s) for d, b in pairs]
        cpu = [_ratio(d.cpu_us_per_record, b.cpu_us_per_record) for d, b in pairs]
        out["ratio"] = {
            "records_per_s": statistics.median(rate),
            "cpu_us_per_record": statistics.median(cpu),
            "records_per_s_runs": rate,
            "cpu_us_per_record_runs": cpu,
        }
    return out


SHAPE_TITLES = {
    "sim": "simulated providers, frames of 10 events (half trades, half quotes)",
    "binance": "Binance, one trade per frame",
    "coinbase": f"Coinbase Advanced Trade, {COINBASE_TRADES_PER_FRAME} trades per frame",
}


def format_table(results: list[Result], summary: dict[str, Any]) -> str:
    head = (
        f"{'pipeline':<9} {'run':>3} {'records':>10} {'wall s':>7} {'records/s':>11} "
        f"{'CPU µs/rec':>10} {'sims CPU s':>10} {'broker CPU s':>12}  ok"
    )
    lines: list[str] = []
    for shape in dict.fromkeys(r.shape for r in results):
        lines += ["", f"{shape}: {SHAPE_TITLES[shape]}", head, "-" * len(head)]
        for r in (x for x in results if x.shape == shape):
            ok = "yes" if r.completed and not r.missing and not r.duplicates else "NO"
            lines.append(
                f"{r.pipeline:<9} {r.run:>3} {r.records:>10,} {r.wall_s:>7.2f} "
                f"{r.records_per_s:>11,.0f} {r.cpu_us_per_record:>10.2f} {r.sims_cpu_s:>10.2f} "
                f"{r.broker_cpu_s:>12.2f}  {ok}"
            )
        sm = summary.get(shape, {})
        lines.append("-" * len(head))
        if "target_records_per_s" in sm:
            got = sm["daemon"]["records_per_s"]
            want = sm["target_records_per_s"]
            lines.append(
                f"daemon records/s (median) {got:,.0f}, target >= {want:,.0f}: "
                + ("met" if got >= want else "NOT met")
            )
        if "ratio" in sm:
            ra = sm["ratio"]
            lines.append(
                f"daemon/baseline (median of {len(ra['records_per_s_runs'])}): "
                f"records/s x{ra['records_per_s']:.2f} (higher is better), "
                f"CPU µs/record x{ra['cpu_us_per_record']:.2f} (lower is better)"
            )
    for r in results:
        for note in r.notes:
            lines.append(f"note [{r.shape} {r.pipeline} run {r.run}]: {note}")
    return "\n".join(lines)


def run_e2e(
    workload: Workload | None = None,
    repeat: int = REPEAT,
    out_dir: Path | None = None,
    pipelines: tuple[str, ...] = ("daemon", "baseline"),
    echo: bool = True,
    shapes: tuple[str, ...] = ("sim",),
) -> dict[str, Any]:
    """Run every pipeline ``repeat`` times (alternating) per workload shape against one local
    broker; returns the report (also written as JSON to ``out_dir``, default ``.benchmarks/``
    in the repo). The baseline reads no Coinbase: that shape runs the daemon only."""
    base = workload or Workload()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_id = f"bench-{stamp}-{os.getpid()}"
    results: list[Result] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fairfeed-bench-") as tmp, LocalBroker() as broker:
        for shape in shapes:
            wl = replace(base, shape=shape)
            kinds = tuple(k for k in pipelines if not (shape == "coinbase" and k == "baseline"))
            for i in range(repeat):
                for kind in kinds:
                    if echo:
                        print(
                            f"[{time.monotonic() - started:6.1f}s] {shape} run {i}: {kind}, "
                            f"{wl.connections()} connections x {wl.per_connection():,} events",
                            flush=True,
                        )
                    results.append(run_pipeline(kind, broker, wl, Path(tmp), run_id, i))
        broker_left = broker.pid
    summary = summarize(results)
    report = {
        "timestamp": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "workload": asdict(base)
        | {
            "shapes": list(shapes),
            "connections": base.connections(),
            "per_connection": base.per_connection(),
        },
        "results": [asdict(r) for r in results],
        "summary": summary,
        "leftovers": [n for r in results for n in r.notes if n.startswith("left behind")]
        + ([f"broker {broker_left}"] if broker_left and alive(broker_left) else []),
    }
    out = (out_dir or REPO / ".benchmarks") / f"e2e-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    report["path"] = str(out)
    if echo:
        print()
        print(format_table(results, summary))
        print(f"\nJSON: {out}  ({report['duration_s']:.0f} s)")
    return report


def main(argv: list[str] | None = None) -> int:
    d = Workload()
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=d.events, help="events per pipeline run")
    ap.add_argument(
        "--seconds", type=float, default=d.seconds, help="per pipeline run: deadline for the data"
    )
    ap.add_argument("--repeat", type=int, default=REPEAT, help="alternating daemon/baseline pairs")
    ap.add_argument("--workers", type=int, default=d.workers, help="daemon ingest workers")
    ap.add_argument("--batch", type=int, default=d.batch, help="events per simulator frame")
    ap.add_argument("--only", choices=("daemon", "baseline"), help="run one pipeline only")
    ap.add_argument("--out-dir", type=Path, help="where the JSON goes (default .benchmarks/)")
    ap.add_argument(
        "--shape", choices=SHAPES, action="append", help="workload shape(s) (default: all)"
    )
    ap.add_argument("--extra", default="", help="TOML appended to the daemon's configuration")
    a = ap.parse_args(argv)
    wl = Workload(a.events, a.batch, workers=a.workers, seconds=a.seconds, extra=a.extra)
    pipelines = (a.only,) if a.only else ("daemon", "baseline")
    report = run_e2e(wl, a.repeat, a.out_dir, pipelines, shapes=tuple(a.shape or SHAPES))
    bad = [
        r
        for r in report["results"]
        if not r["completed"] or r["missing"] or r["duplicates"] or r["exit_code"] != 0
    ]
    return 1 if bad or report["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
