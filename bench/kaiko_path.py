"""Kaiko's gRPC path: the adapter's cost per message, fed the way a loaded Kaiko server writes.

``python -m bench.kaiko_path [--messages N] [--rate R] [--seconds S] [--rounds K]
[--tree DIR ...] [--json OUT]``

The server is :class:`fairfeed.local.kaikoflood.KaikoFlood` in a process of its own: real gRPC
over HTTP/2, pre-serialized ``StreamTradesResponseV1`` messages (one trade each, made by the
local Kaiko server's generator) packed many to a 16 KiB DATA frame, within the client's
flow-control windows. Each measurement is one call of a fresh client in a long-lived client
process (one per client and source tree), in two modes:

- **saturation**: the call streams ``--messages`` messages as fast as the client reads them;
- **paced**: ``--rate`` messages/s (28k, the reference load) for ``--seconds``, what is due
  written every millisecond.

Clients:

- ``adapter``: :class:`~fairfeed.providers.kaiko.adapter.KaikoAdapter` as an ingest worker
  runs it (reader thread, parse into records, hand-off to the asyncio loop, plausibility and
  sequence checks), its records written to a real shared-memory ring whose consumer keeps up;
- ``grpc-raw``: the bare grpcio transport, the floor: a ``SingleThreadedUnaryStream`` channel
  iterated for raw bytes, nothing else.

The window of a measurement starts once a tenth of the call's messages has arrived (channel set
up, Numba kernels compiled) and ends with its last message. Reported per client and mode, the
median over ``--rounds`` (clients and modes alternate within a round): messages/s (wall),
client CPU µs per message (user + system of the client process, every thread: grpc's own
included) and the per-core ceiling 1e6 / µs. On a 2-core machine the server competes for the
cores at saturation, so CPU per message is the sturdier figure.

``--tree DIR`` (repeatable) runs the adapter from other source trees as well (``git worktree
add /tmp/main main``), alternating with the others in each round: before and after in one
session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0}
API_KEY = "bench-key"
KEY_ENV = "FAIRFEED_BENCH_KAIKO_KEY"
WARM_SHARE = 0.1  # of a call's messages, before the window opens


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- clients (each in its own process; fairfeed imported from the process's tree) --------------


def run_adapter(target: str, count: int, warm: int) -> dict:
    """One call read by a fresh :class:`KaikoAdapter`, records into a real ring."""
    import numpy as np

    from fairfeed.core.config import ProviderConfig
    from fairfeed.core.counters import DictCounters, Slot
    from fairfeed.core.options import KaikoOptions
    from fairfeed.core.records import KIND_TRADE
    from fairfeed.core.registry import Registry
    from fairfeed.core.subscriptions import Subscription
    from fairfeed.ipc.ring import Ring
    from fairfeed.providers.base import IngestContext
    from fairfeed.providers.kaiko.adapter import KaikoAdapter

    reg = Registry.build([(s, 1) for s in PRICES], [("kaiko", "COINBASE")])
    subs = tuple(Subscription.resolve(reg, "kaiko", "COINBASE", i, "spot") for i in reg.instruments)
    counters = DictCounters()
    ring = Ring.create(f"ffbench-kaiko-{os.getpid()}", 1 << 16)
    os.environ[KEY_ENV] = API_KEY
    provider = ProviderConfig(
        name="kaiko", kind="kaiko", url=target, tls=False, api_key_env=KEY_ENV,
        options=KaikoOptions(quotes=False, backoff_base=5.0, backoff_cap=5.0),
    )  # fmt: skip

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        marks: list[tuple[int, float, float]] = []  # (records, wall, cpu) at window start / end
        got = 0

        def emit(records: np.ndarray) -> None:
            nonlocal got
            k = ring.write(records)
            ring.commit(ring.written)  # a consumer that keeps up
            if k != len(records):
                raise RuntimeError("bench ring full")
            got += int(np.count_nonzero(records["kind"] == KIND_TRADE))  # not status records
            if not marks and got >= warm:
                marks.append((got, time.perf_counter(), _cpu()))
            if got >= count and not done.done():
                marks.append((got, time.perf_counter(), _cpu()))
                done.set_result(None)

        ctx = IngestContext(provider, target, subs, reg, emit, counters)
        adapter = KaikoAdapter(ctx)
        task = loop.create_task(adapter.run())
        try:
            await asyncio.wait_for(done, 300)
        finally:
            await adapter.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        (n0, t0, c0), (n1, t1, c1) = marks
        if n1 <= n0:
            raise RuntimeError(f"the warm-up and the end came in one hand-off of {got} records: "
                               "nothing left to measure, give more --messages")  # fmt: skip
        return {
            "messages": n1 - n0, "wall": t1 - t0, "cpu": c1 - c0, "records": got,
            "frames_in": counters[Slot.FRAMES_IN], "parse_errors": counters[Slot.PARSE_ERRORS],
        }  # fmt: skip

    try:
        res = asyncio.run(main())
    finally:
        ring.close()
        ring.unlink()
    if res["parse_errors"] or res["records"] != count or res["frames_in"] != count:
        raise RuntimeError(f"adapter read {res} of {count} messages")
    return res


def run_raw(target: str, count: int, warm: int) -> dict:
    """One call on a bare ``SingleThreadedUnaryStream`` channel, raw bytes, nothing else."""
    import grpc
    import grpc.experimental
    from kaikosdk.core.instrument_criteria_pb2 import InstrumentCriteria
    from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

    from fairfeed.providers.kaiko.adapter import TRADES_METHOD

    opts = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
    with grpc.insecure_channel(target, options=opts) as channel:
        call = channel.unary_stream(
            TRADES_METHOD, request_serializer=StreamTradesRequestV1.SerializeToString
        )
        crit = InstrumentCriteria(exchange="cbse", instrument_class="spot", code="*")
        it = call(
            StreamTradesRequestV1(instrument_criteria=crit),
            metadata=(("authorization", f"Bearer {API_KEY}"),),
        )
        n = 0
        for _ in it:
            n += 1
            if n == warm:
                break
        t0, c0 = time.perf_counter(), _cpu()
        for _ in it:
            n += 1
        t1, c1 = time.perf_counter(), _cpu()
    if n != count:
        raise RuntimeError(f"raw client read {n} of {count} messages")
    return {"messages": count - warm, "wall": t1 - t0, "cpu": c1 - c0}


_RUNNERS = {"adapter": run_adapter, "grpc-raw": run_raw}


def client_main(kind: str, target: str) -> None:
    """A client process: one measurement per JSON line on stdin, one JSON line out each."""
    run = _RUNNERS[kind]
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("stop"):
            return
        print(json.dumps(run(target, cmd["count"], cmd["warm"])), flush=True)


class Client:
    """A long-lived client process of ``kind``, importing fairfeed from ``tree`` (None: this
    one)."""

    def __init__(self, kind: str, target: str, tree: str | None = None) -> None:
        self.kind, self.tree = kind, tree
        self.label = kind if tree is None else f"{kind} @{tree}"
        env = dict(os.environ)
        # fairfeed from `tree`, this harness from here
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.abspath(tree) if tree else None, str(REPO)) if p
        )
        code = f"from bench.kaiko_path import client_main; client_main({kind!r}, {target!r})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def measure(self, count: int) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        warm = max(1, int(count * WARM_SHARE))
        self.proc.stdin.write(json.dumps({"count": count, "warm": warm}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client {self.label} died (exit {self.proc.wait()})")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"stop": True}) + "\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the run ----------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    """Median messages/s, CPU µs per message and per-core ceiling of ``runs``."""
    rates = [r["messages"] / r["wall"] for r in runs]
    us = [r["cpu"] / r["messages"] * 1e6 for r in runs]
    med = statistics.median(us)
    return {
        "msgs_per_s": statistics.median(rates),
        "cpu_us_per_msg": med,
        "cpu_us_min": min(us),
        "cpu_us_max": max(us),
        "per_core": 1e6 / med,
        "runs": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    from fairfeed.local.kaikoflood import FloodProcess

    ap = argparse.ArgumentParser(
        prog="python -m bench.kaiko_path", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--messages", type=int, default=200_000, help="per saturation call")
    ap.add_argument("--rate", type=float, default=28_000.0, help="messages/s of a paced call")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of a paced call")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per client and mode")
    ap.add_argument("--tree", action="append", default=[], help="also the adapter of this tree")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    paced = int(a.rate * a.seconds)
    t_start = time.monotonic()
    server = FloodProcess(PRICES, max(a.messages, paced), API_KEY)
    clients = [Client("adapter", server.target)]
    clients += [Client("adapter", server.target, t) for t in a.tree]
    clients.append(Client("grpc-raw", server.target))
    modes = [("saturation", 0.0, a.messages), (f"{a.rate / 1000:g}k msg/s", a.rate, paced)]
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for rnd in range(a.rounds):
            for mode, rate, count in modes:
                server.set(rate, count)
                order = clients if rnd % 2 == 0 else clients[::-1]
                for c in order:
                    r = c.measure(count)
                    results.setdefault((c.label, mode), []).append(r)
                    rate_s, us = r["messages"] / r["wall"], r["cpu"] / r["messages"] * 1e6
                    print(f"  round {rnd + 1} {mode:>13} {c.label:<24} {rate_s:>9,.0f} msg/s "
                          f"{us:6.2f} µs CPU/msg", flush=True)  # fmt: skip
        stats = server.stats()
    finally:
        for c in clients:
            c.stop()
        server.stop()
    print(f"\nKaiko gRPC path: server {stats['messages_sent'] / max(1, stats['frames']):.0f} "
          f"messages per DATA frame, {time.monotonic() - t_start:.0f} s in all; median of "
          f"{a.rounds}\n")  # fmt: skip
    print("| client | mode | msg/s (wall) | client CPU µs/msg (min–max) | msg/s per core |")
    print("|---|---|---|---|---|")
    summary = {}
    for (label, mode), runs in results.items():
        s = summarize(runs)
        summary[f"{label} / {mode}"] = s
        spread = f"{s['cpu_us_min']:.2f}–{s['cpu_us_max']:.2f}"
        print(f"| {label} | {mode} | {s['msgs_per_s']:,.0f} | {s['cpu_us_per_msg']:.2f} "
              f"({spread}) | {s['per_core']:,.0f} |")  # fmt: skip
    sat = summary.get("adapter / saturation")
    if sat:
        verdict = "met" if sat["per_core"] >= 50_000 else "NOT met"
        print(f"\ntarget (issue 12): adapter >= 50,000 msg/s per core at saturation: "
              f"{sat['per_core']:,.0f} ({verdict})")  # fmt: skip
    out = a.json or REPO / ".benchmarks" / f"kaiko-path-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "server": stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
