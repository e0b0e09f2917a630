"""The local server base with a minimal protocol: pacing, stats and every fault."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from websockets.asyncio.client import connect

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault
from fairfeed.local.market import EventBatch
from fairfeed.local.wsserver import Conn, LocalWsServer
from tests.waiting import wait_for_async


class Toy(LocalWsServer):
    heartbeat_interval = 0.05

    async def on_message(self, conn: Conn, text: str) -> None:
        req = json.loads(text)
        if self.rejecting():
            await conn.send('{"error":"rate limited"}')
            return
        known, _ = self.indexes(req["subscribe"])
        conn.subscribe(known)
        await conn.send('{"ok":true}')

    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        names = self.market.symbols
        return [
            json.dumps({"s": names[ev.symbol[i]], "q": bool(ev.is_quote[i]), "seq": int(ev.seq[i])})
            for i in range(len(ev))
        ]

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        return ['{"hb":1}']

    def reconnect_notice(self, conn: Conn) -> str | None:
        return '{"reconnect":true}'


CFG = SimulatorConfig(prices={"A": 10.0, "B": 20.0}, rate=400, seed=3)


class Reader:
    """Reads a client connection, keeping count of the data messages it has seen."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.data = 0

    async def read(self, seconds: float) -> list[dict]:
        out = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                async for m in self.ws:
                    out.append(json.loads(m))
        self.data += sum("s" in m for m in out)
        return out

    async def drain(self, server: Toy) -> None:
        """Read everything the server sent before now (it has stopped sending data)."""
        async with asyncio.timeout(10):
            await self.read(0.1)  # let a batch being sent finish, so stats count all of it
            while self.data < server.stats.events:
                await self.read(0.05)


def test_paced_stream_stats_and_faults() -> None:
    async def main() -> None:
        async with Toy("toy", CFG) as server, connect(server.url) as ws:
            r = Reader(ws)
            await ws.send('{"subscribe":["A","B","C"]}')
            msgs = await r.read(0.5)
            data = [m for m in msgs if "s" in m]
            assert {"ok": True} in msgs and any("hb" in m for m in msgs)
            assert 0 < len(data) <= 300  # paced: 400/s for 0.5 s
            # the server goes on sending while we look: it sent at least what we read
            assert server.stats.events >= len(data)
            a = [m["seq"] for m in data if m["s"] == "A"]
            assert a == list(range(1, len(a) + 1))

            last_before = int(server.market.seq[0])  # A's last number generated before the gap
            await server.inject(Fault.SEQUENCE_GAP, 7)
            # Read past what was in flight before the fault, to the gapped event and one after.
            seqs = list(a)
            async with asyncio.timeout(10):
                while seqs[-1] < last_before + 7 + 2:
                    seqs += [m["seq"] for m in await r.read(0.1) if m.get("s") == "A"]
            steps = [y - x for x, y in itertools.pairwise(seqs)]
            assert steps.count(8) == 1 and set(steps) == {1, 8}  # 7 numbers skipped, once

            await server.inject(Fault.HEARTBEATS_ONLY)
            await r.drain(server)
            quiet = await r.read(0.3)
            assert quiet and all("hb" in m for m in quiet)
            server.clear()
            await server.inject(Fault.STALL)
            await r.drain(server)
            assert await r.read(0.3) == []
            server.clear()

            await r.read(0.1)
            await server.inject(Fault.MALFORMED, 2)
            assert await server.inject(Fault.RECONNECT_NOTICE) == 1
            await server.inject(Fault.REJECT_SUBSCRIBE)
            await ws.send('{"subscribe":["A"]}')
            raw = []
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    async for m in ws:
                        raw.append(m)
            assert raw.count(server.malformed_message()) == 2
            assert '{"reconnect":true}' in raw and '{"error":"rate limited"}' in raw
            assert server.stats.rejected == 1 and server.stats.malformed == 2

            assert await server.inject(Fault.DISCONNECT) == 1
            await wait_for_async(lambda: server.connections() == 0, 2.0, "the disconnect")

    asyncio.run(main())


def test_gate_message_path_and_stats_shape() -> None:
    cfg = SimulatorConfig(prices={"A": 10.0, "B": 20.0}, rate=0, max_events=50, seed=3)

    async def main() -> None:
        gate = asyncio.Event()
        server = Toy("toy", cfg, log_events=True, gate=gate)
        async with server, connect(server.url) as ws:
            r = Reader(ws)
            await ws.send('{"subscribe":["A","B"]}')
            await wait_for_async(lambda: server.stats.prepared == 1, what="the workload")
            assert [m for m in await r.read(0.1) if "s" in m] == []
            gate.set()
            await wait_for_async(lambda: server.stats.finished == 1, what="finished")
            data = [m for m in await r.read(0.1) if "s" in m]
            st = server.stats
            assert len(data) == st.events == st.frames == len(st.log) == 50
            assert [(m["s"], m["seq"]) for m in data] == [(e[1], e[-3]) for e in st.log]
            for name in ("A", "B"):
                trades = [e for e in st.log if e[:2] == ("trade", name)]
                quotes = [e for e in st.log if e[:2] == ("quote", name)]
                assert st.symbol(name).last_trade == trades[-1][2:]
                assert st.symbol(name).last_quote == quotes[-1][2:]
                assert st.symbol(name).records == len(trades) + 2 * len(quotes)

    asyncio.run(main())


def test_rate_scale_slows_the_paced_stream_until_cleared() -> None:
    async def main() -> None:
        async with Toy("toy", CFG) as server, connect(server.url) as ws:
            r = Reader(ws)
            await ws.send('{"subscribe":["A","B"]}')
            await wait_for_async(lambda: server.stats.events > 20, what="data at the full rate")
            with pytest.raises(ValueError, match="amount must be > 0"):
                await server.inject(Fault.RATE_SCALE, 0.0)
            assert await server.inject(Fault.RATE_SCALE, 0.05) == 1
            await r.drain(server)  # what was sent at the full rate
            before, t0 = server.stats.events, asyncio.get_running_loop().time()
            await r.read(0.5)
            elapsed = asyncio.get_running_loop().time() - t0
            # paced never ahead of its rate: 400/s x 0.05 = 20/s (+ one unit)
            assert server.stats.events - before <= 20 * elapsed + 1
            server.clear()
            assert server.faults.rate_scale == 1.0
            more = server.stats.events + 100
            await wait_for_async(lambda: server.stats.events > more, what="the full rate again")

    asyncio.run(main())
