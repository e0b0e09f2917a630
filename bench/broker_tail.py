"""What makes the local broker's latency tail: a plain producer against broker settings.

``python -m bench.broker_tail [--rate R] [--seconds S] [--repeat N] [--only NAME ...]``

Each configuration runs the plain producer of ``bench/plain.py`` (a process of its own, the
daemon's producer settings unless the configuration overrides them) at ``--rate`` messages/s
for ``--seconds`` into a fresh topic, with a consumer reading the topic from its end (send →
visible) unless the configuration says not to. Configurations alternate, ``--repeat`` rounds,
on one broker per round (``fresh broker`` rows start one of their own), so a slow phase of the
shared machine hits them all. Printed: ack (``produce()`` → acknowledgement) p50 / p99 / p99.9 /
max, the number of acks slower than 100 ms, send → visible p50 / p99, the broker's CPU, the time
its threads waited for a CPU while runnable (ms per second), and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.e2e import cpu_seconds
from bench.plain import VisibleProbe, percentiles, plain_stamp, run_plain
from fairfeed.kafka.broker import LocalBroker, ensure_topics

REPO = Path(__file__).resolve().parent.parent
STALL_MS = 100.0


@dataclass(frozen=True)
class Case:
    name: str
    partitions: int = 3
    size: int = 300  # bytes per message: a ticks message of ~4 records is ~300-400 B
    overrides: dict[str, Any] = field(default_factory=dict)  # librdkafka producer settings
    probe: bool = True  # a consumer reads the topic meanwhile
    fresh_broker: bool = False  # a broker of its own (nothing stored before)
    hogs: int = 0  # busy-looping processes beside it (a machine as loaded as a shared one)
    broker_nice: int = 0  # the broker's threads at this nice value (a broker of its own)


CASES = (
    Case("reference (3 partitions, 300 B, linger 5 ms, acks=all, idempotent)"),
    Case("no consumer", probe=False),
    Case("1 partition", partitions=1),
    Case("12 partitions", partitions=12),
    Case("100 B", size=100),
    Case("3000 B", size=3000),
    Case("linger 0 ms", overrides={"linger.ms": 0}),
    Case("linger 20 ms", overrides={"linger.ms": 20}),
    Case("acks=1, not idempotent", overrides={"acks": 1, "enable.idempotence": False}),
    Case("no compression", overrides={"compression.type": "none"}),
    Case("fresh broker", fresh_broker=True),
    Case("2 CPU hogs", hogs=2),
    Case("2 CPU hogs, broker at nice -10", hogs=2, broker_nice=-10),
)


@dataclass
class Row:
    case: str
    round: int
    rate: float
    acked: int = 0
    errors: int = 0
    ack_ms: dict[str, float] = field(default_factory=dict)
    slow_acks: int = 0  # acks slower than STALL_MS
    visible_ms: dict[str, float] = field(default_factory=dict)
    broker_cpu_s: float = 0.0
    # time the broker's threads were runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat),
    # ms per second of the case: CPU starvation, not the broker's own work
    broker_wait_ms_per_s: float = 0.0
    loadavg: float = 0.0  # 1-minute load average at the end of the case
    # per second of the case: (slowest ack of the messages created in it (ms), the broker's
    # wait for a CPU in it (ms), the machine's runnable threads in it (mean of /proc/stat
    # procs_running samples))
    per_second: list[tuple[float, float, float]] = field(default_factory=list)
    stored_before: int = 0  # messages the broker held before this case


def run_delay_ns(pid: int) -> int:
    """Time all threads of ``pid`` spent runnable, waiting for a CPU (ns, since they started)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


def renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` to ``nice`` (on Linux a nice value is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def _hogs(n: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]


def procs_running() -> int:
    """Threads runnable on the machine now (``procs_running`` of /proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    return 0


class Sampler:
    """Every ``interval`` s in a thread: (wall ns, the broker's total CPU wait ns, runnable
    threads on the machine)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.samples: list[tuple[int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid, interval), daemon=True)
        self._thread.start()

    def _run(self, pid: int, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append((time.time_ns(), run_delay_ns(pid), procs_running()))

    def stop(self) -> np.ndarray:
        self._stop.set()
        self._thread.join(5)
        return np.array(self.samples, np.int64).reshape(-1, 3)


def per_second(
    ack_ms: np.ndarray, created_ms: np.ndarray, samples: np.ndarray
) -> list[tuple[float, float, float]]:
    """Per whole second of the samples: slowest ack of the messages created in it, the broker's
    CPU wait in it (ms) and the mean runnable threads."""
    out: list[tuple[float, float, float]] = []
    if len(samples) < 2 or len(ack_ms) == 0:
        return out
    sec = samples[:, 0] // 10**9
    for s in np.unique(sec)[1:-1]:  # whole seconds only
        inside = np.flatnonzero(sec == s)
        before = inside[0] - 1
        wait = (samples[inside[-1], 1] - samples[before, 1]) / 1e6
        made = (created_ms // 1000) == s
        if made.any():
            out.append((float(ack_ms[made].max()), float(wait), float(samples[inside, 2].mean())))
    return out


def _corr(a: list[float], b: list[float]) -> float:
    """Rank correlation (Spearman, no ties correction)."""
    if len(a) < 3:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run_case(
    case: Case, broker: LocalBroker, rate: float, seconds: float, r: int, held: int
) -> Row:
    topic = f"tail-{os.getpid()}-{r}-{abs(hash(case.name)) % 10**6}"
    ensure_topics(broker.bootstrap, [topic], case.partitions)
    probe = (
        VisibleProbe(broker.bootstrap, topic, plain_stamp, case.partitions) if case.probe else None
    )
    if case.broker_nice:
        renice(broker.pid or 0, case.broker_nice)
    hogs = _hogs(case.hogs)
    cpu0, wait0 = cpu_seconds([broker.pid or 0]), run_delay_ns(broker.pid or 0)
    sampler = Sampler(broker.pid or 0)
    t0 = time.time_ns()
    try:
        res, ack, created = run_plain(
            broker.bootstrap, topic, rate, seconds, case.size, case.overrides
        )
    finally:
        samples = sampler.stop()
        vis = probe.stop(t0) if probe is not None else np.empty(0)
        for h in hogs:
            h.kill()
            h.wait()
    cpu1, wait1 = cpu_seconds([broker.pid or 0]), run_delay_ns(broker.pid or 0)
    row = Row(case.name, r, rate, res.acked, res.errors, res.ack_ms, int((ack > STALL_MS).sum()))
    row.visible_ms = percentiles(vis)
    row.broker_cpu_s = sum(cpu1.values()) - sum(cpu0.values())
    row.stored_before = held
    row.broker_wait_ms_per_s = (wait1 - wait0) / 1e6 / max((time.time_ns() - t0) / 1e9, 1e-9)
    row.loadavg = os.getloadavg()[0]
    row.per_second = per_second(ack, created, samples)
    return row


def format_table(rows: list[Row]) -> str:
    head = (f"{'configuration':<66} {'rnd':>3} {'acked':>7} {'p50':>6} {'p99':>7} {'p99.9':>7}"
            f" {'max':>7} {'>100ms':>6} {'vis p50':>7} {'vis p99':>7} {'brk CPU':>7}"
            f" {'brk wait':>8} {'load':>5}")  # fmt: skip
    lines = ["ack and send→visible latency, ms", head, "-" * len(head)]
    for w in rows:
        a, v = w.ack_ms, w.visible_ms
        lines.append(
            f"{w.case[:66]:<66} {w.round:>3} {w.acked:>7} {a.get('p50', 0):>6.1f}"
            f" {a.get('p99', 0):>7.1f} {a.get('p99.9', 0):>7.1f} {a.get('max', 0):>7.1f}"
            f" {w.slow_acks:>6} {v.get('p50', 0):>7.1f} {v.get('p99', 0):>7.1f}"
            f" {w.broker_cpu_s:>7.2f} {w.broker_wait_ms_per_s:>8.1f} {w.loadavg:>5.1f}"
        )
    return "\n".join(lines)


def run_tail(
    rate: float, seconds: float, repeat: int, cases: tuple[Case, ...], out: Path | None = None
) -> dict:
    rows: list[Row] = []
    for r in range(repeat):
        with LocalBroker() as shared:
            held = 0
            for case in cases:
                print(f"round {r}: {case.name}", flush=True)
                if case.fresh_broker or case.broker_nice:
                    with LocalBroker() as own:
                        rows.append(run_case(case, own, rate, seconds, r, 0))
                else:
                    rows.append(run_case(case, shared, rate, seconds, r, held))
                    held += rows[-1].acked
    report = {
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "options": {"rate": rate, "seconds": seconds, "repeat": repeat},
        "cases": [asdict(c) for c in cases],
        "rows": [asdict(w) for w in rows],
    }
    path = out or REPO / ".benchmarks" / f"broker-tail-{report['timestamp']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    print()
    print(format_table(rows))
    secs = [x for w in rows for x in w.per_second]
    if secs:
        slow, wait, run = (list(c) for c in zip(*secs, strict=True))
        report["per_second_correlation"] = {
            "seconds": len(secs),
            "slowest_ack_vs_broker_wait": _corr(slow, wait),
            "slowest_ack_vs_runnable_threads": _corr(slow, run),
        }
        print(
            f"per second of every case ({len(secs)} s): rank correlation of the slowest ack with "
            f"the broker's CPU wait {_corr(slow, wait):+.2f}, with the machine's runnable "
            f"threads {_corr(slow, run):+.2f}"
        )
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.broker_tail", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--rate", type=float, default=7400.0, help="messages/s")
    ap.add_argument("--seconds", type=float, default=15.0, help="per configuration")
    ap.add_argument("--repeat", type=int, default=2, help="rounds over the configurations")
    ap.add_argument("--only", action="append", help="configurations whose name starts so")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    cases = tuple(c for c in CASES if not a.only or any(c.name.startswith(o) for o in a.only))
    run_tail(a.rate, a.seconds, a.repeat, cases, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
