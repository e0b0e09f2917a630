"""The local server base with a minimal protocol: pacing, stats and every fault."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from fairfeed.daemon.config import SimulatorConfig
from fairfeed.providers.local.faults import Fault
from fairfeed.providers.local.market import EventBatch
from fairfeed.providers.local.wsserver import Conn, LocalWsServer


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


async def _collect(ws, seconds: float) -> list[dict]:
    out = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            async for m in ws:
                out.append(json.loads(m))
    return out


def test_paced_stream_stats_and_faults() -> None:
    async def main() -> None:
        async with Toy("toy", CFG) as server, connect(server.url) as ws:
            await ws.send('{"subscribe":["A","B","C"]}')
            msgs = await _collect(ws, 0.5)
            data = [m for m in msgs if "s" in m]
            assert {"ok": True} in msgs and any("hb" in m for m in msgs)
            assert 100 <= len(data) <= 300  # 400/s for 0.5 s
            # the server goes on sending while we look: it sent at least what we read
            assert server.stats.events >= len(data)
            a = [m["seq"] for m in data if m["s"] == "A"]
            assert a == list(range(1, len(a) + 1))

            await server.inject(Fault.SEQUENCE_GAP, 7)
            more = [m["seq"] for m in await _collect(ws, 0.2) if m.get("s") == "A"]
            steps = [y - x for x, y in zip(a + more, (a + more)[1:], strict=False)]
            assert steps.count(8) == 1 and set(steps) == {1, 8}  # 7 numbers skipped, once

            await server.inject(Fault.HEARTBEATS_ONLY)
            await _collect(ws, 0.1)  # what was already in flight
            quiet = await _collect(ws, 0.3)
            assert quiet and all("hb" in m for m in quiet)
            server.clear()
            await server.inject(Fault.STALL)
            await _collect(ws, 0.1)
            assert await _collect(ws, 0.3) == []
            server.clear()

            await _collect(ws, 0.1)
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
            await asyncio.sleep(0.1)
            assert server.connections() == 0

    asyncio.run(main())
