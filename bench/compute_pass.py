"""What one compute pass costs at the real load, with the machine's noise kept out.

``python -m bench.compute_pass [--records N] [--passes P] [--gap S] [--rounds R] [--tree DIR ...]``

The fixed-rate benchmark (``bench.steady``) measures the whole daemon, but on a shared machine
its passes change shape with the load (a slow pass gathers more records, so fewer, bigger
messages), which hides a change in the cost of the pass itself. This one runs the compute
process's own calls — ring reads, ``Pipeline.process`` (kernels, metrics, ticks encoding,
spooling), the sink's commit and ring release, the fair prices every 0.1 s and the sink's
``poll()`` every 5 ms — on the same pass every time: ``--records`` trades (default 28, what
1 ms holds at 28k msg/s) of 8 instruments from 2 rings, into a real local broker, with
``--gap`` seconds of sleep between passes (caches go cold as in the daemon). Reported per
pass: the main thread's CPU in those calls (``thread_time``), and the process's (librdkafka's
threads, and the harness writing the records into the rings, too).

Each ``--tree`` is a source tree with a ``fairfeed`` package, imported in a fresh process
(``PYTHONPATH``); rounds alternate the trees and the median per tree and the ratio to the
first are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT", "LTCUSDT")
FAIR_EVERY = 0.1  # the default fair.min_interval
POLL_EVERY = 0.005  # the compute loop's sink poll while messages are in flight


def _config(bootstrap: str, tag: str) -> str:
    return f"""
[daemon]
workers = 2
[kafka]
bootstrap = "{bootstrap}"
ticks_topic = "{tag}.ticks"
fair_topic = "{tag}.fair"
[metrics]
listen = "127.0.0.1:0"
[[providers]]
name = "binance"
kind = "binance"
venue = "BINANCE"
url = "ws://127.0.0.1:1"
[[subscriptions]]
provider = "binance"
instruments = {json.dumps(list(SYMBOLS))}
"""


def run_passes(bootstrap: str, records: int, passes: int, gap: float) -> dict[str, float]:
    """One measurement in this process (imports fairfeed from wherever it is found)."""
    from fairfeed.core import config as config_mod
    from fairfeed.core.records import CLASS_SPOT, KIND_TRADE, RECORD_DTYPE, empty_records
    from fairfeed.daemon.compute import Pipeline, output_sink
    from fairfeed.daemon.run import build_registry
    from fairfeed.hotpath.metrics import warm_metrics
    from fairfeed.hotpath.warmup import warm_up
    from fairfeed.ipc.control import ControlBlock
    from fairfeed.ipc.counters import SlotCounters
    from fairfeed.ipc.metricsboard import MetricsBoard
    from fairfeed.ipc.ring import Ring
    from fairfeed.ipc.streams import StreamBoard
    from fairfeed.kafka.broker import ensure_topics

    warm_up()
    warm_metrics()
    tag = f"compute-pass-{os.getpid()}"
    cfg = config_mod.loads(_config(bootstrap, tag))
    ensure_topics(bootstrap, [cfg.kafka.ticks_topic, cfg.kafka.fair_topic], 3)
    reg = build_registry(cfg)
    d = cfg.daemon
    control = ControlBlock.create(f"{tag}-control", 3, d.max_instruments)
    streams = StreamBoard.create(f"{tag}-streams", d.max_instruments, d.max_sources)
    board = MetricsBoard.create(f"{tag}-metrics", d.max_instruments, d.max_sources)
    rings = [Ring.create(f"{tag}-ring{i}", cfg.ring.capacity) for i in range(2)]
    spool = Path(tempfile.mkdtemp(prefix="fairfeed-compute-pass-"))
    counters = SlotCounters(control, 2)
    sink = output_sink(cfg, counters, spool)
    try:
        pipe = Pipeline(cfg, reg, sink, control, counters, streams=streams, metrics=board)
        insts = np.array([reg.instrument_id(s) for s in SYMBOLS], np.uint32)
        per_ring = max(records // len(rings), 1)
        batch = empty_records(per_ring)  # each ring's part: 4 instruments
        batch["provider"] = reg.providers.index("binance")
        batch["venue"] = reg.venues.index("BINANCE")
        batch["data_class"] = CLASS_SPOT
        batch["kind"] = KIND_TRADE
        batch["size"] = 1.0
        rng = np.random.default_rng(1)
        buf = np.empty(cfg.ring.read_batch * len(rings), RECORD_DTYPE)
        clock = time.monotonic
        next_fair = next_poll = 0.0
        seq = 0

        def one(measure: bool) -> int:
            nonlocal next_fair, next_poll, seq
            for i, ring in enumerate(rings):
                batch["instrument"] = insts[np.arange(per_ring) % 4 + 4 * i]
                batch["price"] = 100 + rng.standard_normal(per_ring)
                batch["sequence"] = np.arange(seq, seq + per_ring)
                batch["ts_receive"] = time.time_ns()
                seq += per_ring
                ring.write(batch)
            t0 = time.thread_time_ns()
            got, parts = 0, []
            for ring in rings:
                k = ring.read_into(buf[got : got + cfg.ring.read_batch], commit=False)
                parts.append((ring, k))
                got += k
            pipe.process(buf[:got], parts)
            sink.commit(tag.encode(), np.array([r.cursor for r in rings], np.int64))
            for ring in rings:
                ring.commit()
            now = clock()
            if now >= next_fair:
                pipe.emit_fair(time.time_ns())
                next_fair = now + FAIR_EVERY
            if now >= next_poll:
                sink.poll()
                next_poll = now + POLL_EVERY
            return time.thread_time_ns() - t0 if measure else 0

        for _ in range(max(passes // 5, 50)):  # warm-up: the producer connected, caches warm
            one(False)
            time.sleep(gap)
        main_ns = 0
        cpu0 = time.process_time()
        for _ in range(passes):
            main_ns += one(True)
            time.sleep(gap)
        cpu = time.process_time() - cpu0
        undelivered = sink.close(10.0)
        if undelivered:
            raise RuntimeError(f"{undelivered} messages not delivered")
        return {
            "main_us_per_pass": main_ns / passes / 1e3,
            "process_us_per_pass": cpu * 1e6 / passes,
        }
    finally:
        for seg in (control, streams, board, *rings):
            seg.close()
            seg.unlink()


def measure(tree: str | None, bootstrap: str, records: int, passes: int, gap: float) -> dict:
    """One measurement in a fresh process importing fairfeed from ``tree``."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.path.abspath(tree)
    code = (
        "import json, sys; from bench.compute_pass import run_passes; "
        f"print(json.dumps(run_passes({bootstrap!r}, {records}, {passes}, {gap})))"
    )
    # the harness module comes from this tree, fairfeed from ``tree``
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), here) if p)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"measurement in {tree or 'this tree'} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from fairfeed.kafka.broker import LocalBroker

    ap = argparse.ArgumentParser(
        prog="python -m bench.compute_pass", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--records", type=int, default=28, help="trades per pass (2 rings)")
    ap.add_argument("--passes", type=int, default=2000, help="measured passes per round")
    ap.add_argument("--gap", type=float, default=0.001, help="seconds of sleep between passes")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per tree")
    ap.add_argument("--tree", action="append", default=[], help="source tree (repeatable)")
    a = ap.parse_args(argv)
    trees: list[str | None] = list(a.tree) or [None]
    res: dict[int, list[dict]] = {i: [] for i in range(len(trees))}
    with LocalBroker() as broker:
        for _ in range(a.rounds):
            for i, tree in enumerate(trees):
                r = measure(tree, broker.bootstrap, a.records, a.passes, a.gap)
                res[i].append(r)
                m, p = r["main_us_per_pass"], r["process_us_per_pass"]
                print(f"  {tree or 'this tree'}: main thread {m:.0f} µs, process {p:.0f} µs "
                      "per pass", flush=True)  # fmt: skip
    base = {
        k: statistics.median(r[k] for r in res[0])
        for k in ("main_us_per_pass", "process_us_per_pass")
    }
    print(f"\n{a.records} trades per pass (8 instruments, 2 rings), {a.passes} passes, "
          f"{a.gap * 1e3:g} ms apart; median of {a.rounds} rounds")  # fmt: skip
    for i, tree in enumerate(trees):
        m = statistics.median(r["main_us_per_pass"] for r in res[i])
        p = statistics.median(r["process_us_per_pass"] for r in res[i])
        rm, rp = m / base["main_us_per_pass"], p / base["process_us_per_pass"]
        print(f"{tree or 'this tree':<28} main thread {m:7.1f} µs/pass (x{rm:.2f}, "
              f"{m / a.records:.2f} µs per trade)  process {p:7.1f} µs/pass "
              f"(x{rp:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
