"""The simulator server's rate at ``rate = 0``: events a frame-counting client receives per second.

``python -m bench.sim_rate [--events N] [--batch B ...] [--rounds R] [--tree DIR ...]``

Each ``--tree`` is a source tree holding a ``fairfeed`` package (a checkout or a
``git archive`` of another commit); the server runs in a child process importing fairfeed from
it (``PYTHONPATH``), so two versions can be compared in one session on the same machine load.
Without ``--tree`` the installed fairfeed is measured. Rounds alternate the trees (A B A B ...)
so a change in the machine's load hits both; the median per tree and the ratio to the first
tree are printed.

The client (picows, in this process) counts frames and takes every frame as ``batch`` events
(``max_events`` is 0, so every frame is full): it is cheap, and the server is the bottleneck.
Besides events/s (wall), the server's CPU per event (utime + stime of its process over the same
window, ``/proc/<pid>/stat``) is given: it moves less than wall time when the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from bench.e2e import cpu_seconds

SERVER = """
import asyncio, sys
from fairfeed.core.config import SimulatorConfig
from fairfeed.local.simulator import SimulatorServer, serve_forever

cfg = SimulatorConfig(prices={"BTC-USD": 64000.0, "ETH-USD": 3000.0}, rate=0, batch=%d)
def ready(servers):
    print(servers[0].port, flush=True)
asyncio.run(serve_forever([SimulatorServer("bench", cfg)], ready, None, True))
"""


def server_cpu(pid: int) -> float:
    return cpu_seconds([pid])[pid]


async def _receive(url: str, batch: int, events: int, pid: int) -> tuple[float, float]:
    """(wall s, server CPU s) for ``events`` events to arrive, from the first batch frame on."""
    from picows import WSListener, WSMsgType, ws_connect

    done = asyncio.get_running_loop().create_future()
    frames_needed = -(-events // batch)
    state = {"frames": 0, "t0": 0.0, "c0": 0.0}

    class Listener(WSListener):
        def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
            if frame.get_payload_as_memoryview()[:15] != b'{"type":"batch"':
                return
            if not state["t0"]:
                state["t0"], state["c0"] = time.perf_counter(), server_cpu(pid)
            state["frames"] += 1
            if state["frames"] > frames_needed and not done.done():
                cpu = server_cpu(pid) - state["c0"]
                done.set_result((time.perf_counter() - state["t0"], cpu))

    transport, _ = await ws_connect(Listener, url)
    transport.send(WSMsgType.TEXT, b'{"op":"subscribe","id":1,"symbols":["BTC-USD","ETH-USD"]}')
    dt = await done
    transport.disconnect()
    return dt


def measure(tree: str | None, batch: int, events: int) -> tuple[float, float]:
    """(events/s, server CPU µs/event) from one fresh server process importing fairfeed from
    ``tree``."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.path.abspath(tree)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER % batch], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        dt, cpu = asyncio.run(_receive(f"ws://127.0.0.1:{port}", batch, events, proc.pid))
        return events / dt, cpu * 1e6 / events
    finally:
        proc.terminate()
        proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000, help="events per measurement")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--rounds", type=int, default=5, help="measurements per tree and batch")
    ap.add_argument("--tree", action="append", default=[], help="source tree (repeatable)")
    a = ap.parse_args()
    trees: list[str | None] = list(a.tree) or [None]
    for batch in a.batch:
        rates: dict[int, list[float]] = {i: [] for i in range(len(trees))}
        cpus: dict[int, list[float]] = {i: [] for i in range(len(trees))}
        for _ in range(a.rounds):
            for i, tree in enumerate(trees):
                rate, cpu = measure(tree, batch, a.events)
                rates[i].append(rate)
                cpus[i].append(cpu)
        base, base_cpu = statistics.median(rates[0]), statistics.median(cpus[0])
        for i, tree in enumerate(trees):
            med, cpu = statistics.median(rates[i]), statistics.median(cpus[i])
            runs = " ".join(f"{r / 1e3:.0f}k" for r in rates[i])
            print(
                f"batch={batch:<4} {tree or 'installed':<24} median {med:>9,.0f} events/s "
                f"(x{med / base:.3f}), server CPU {cpu:.3f} µs/event (x{cpu / base_cpu:.3f})"
                f"  [{runs}]",
                flush=True,
            )


if __name__ == "__main__":
    main()
