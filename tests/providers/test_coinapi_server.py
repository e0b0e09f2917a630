"""The local CoinAPI v1 server on its own: filters, scope changes, heartbeats, errors, notices."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.coinapi import INVALID_KEY, CoinApiServer
from fairfeed.local.faults import Fault

PRICES = {
    "COINBASE_SPOT_BTC_USD": 64000.0,
    "COINBASE_SPOT_BTC_USDT": 63990.0,
    "KRAKEN_SPOT_BTC_USD": 64010.0,
    "BINANCE_PERP_BTC_USDT": 64020.0,
}


def srv(**kw) -> CoinApiServer:
    cfg = SimulatorConfig(prices=PRICES, rate=2000, seed=1)
    kw.setdefault("heartbeat_interval", 0.05)
    return CoinApiServer("c", cfg, api_key="K", **kw)


def req(kind="hello", symbols=(), types=("trade", "quote"), key="K", hb=False, **extra) -> str:
    return json.dumps({"type": kind, "apikey": key, "heartbeat": hb,
                       "subscribe_data_type": list(types),
                       "subscribe_filter_symbol_id": list(symbols), **extra})  # fmt: skip


async def collect(ws, seconds: float) -> list[dict]:
    out: list[dict] = []
    try:
        async with asyncio.timeout(seconds):
            async for m in ws:
                out.append(json.loads(m))
    except (TimeoutError, ConnectionClosed):
        pass
    return out


def symbols(msgs) -> set[str]:
    return {m["symbol_id"] for m in msgs if m["type"] in ("trade", "quote")}


def test_filters_scope_changes_and_per_connection_sequences() -> None:
    async def main() -> None:
        async with srv() as s, connect(s.url) as ws:
            await ws.send(req(symbols=["COINBASE_SPOT_BTC_USD"]))  # a prefix: USD and USDT
            assert symbols(await collect(ws, 0.2)) == {
                "COINBASE_SPOT_BTC_USD", "COINBASE_SPOT_BTC_USDT"}  # fmt: skip
            await ws.send(req(symbols=["COINBASE_SPOT_BTC_USD$"]))  # hello replaces; $ = exact
            await collect(ws, 0.05)
            assert symbols(await collect(ws, 0.2)) == {"COINBASE_SPOT_BTC_USD"}
            await ws.send(req("subscribe", symbols=[], subscribe_filter_exchange_id=["BINANCE"]))
            await collect(ws, 0.05)
            msgs = await collect(ws, 0.2)
            assert symbols(msgs) == {"COINBASE_SPOT_BTC_USD", "BINANCE_PERP_BTC_USDT"}
            for key in {(m["type"], m["symbol_id"]) for m in msgs}:
                seqs = [m["sequence"] for m in msgs if (m["type"], m["symbol_id"]) == key]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous
            await ws.send(req("unsubscribe", symbols=["COINBASE_SPOT_BTC_USD$"]))
            # (one symbol out, one in: the base's pacing starves a stream whose rate dropped)
            await ws.send(req("subscribe", symbols=["KRAKEN_SPOT_BTC_USD$"]))
            await collect(ws, 0.05)
            assert symbols(await collect(ws, 0.2)) == {
                "BINANCE_PERP_BTC_USDT", "KRAKEN_SPOT_BTC_USD"}  # fmt: skip
            await ws.send(req("unsubscribe", types=["quote"]))
            await collect(ws, 0.05)
            assert {m["type"] for m in await collect(ws, 0.2)} == {"trade"}

    asyncio.run(main())


@pytest.mark.parametrize("spelling", ["hearbeat", "heartbeat"])
def test_heartbeats_only_when_asked_and_only_in_silence(spelling) -> None:
    async def main() -> None:
        async with srv(heartbeat_type=spelling) as s:
            async with connect(s.url) as ws:
                await ws.send(req(symbols=["KRAKEN_SPOT_BTC_USD$"], hb=False))
                await s.inject(Fault.HEARTBEATS_ONLY)
                assert all(m["type"] != spelling for m in await collect(ws, 0.3))
            async with connect(s.url) as ws:
                s.clear()
                await ws.send(req(symbols=["KRAKEN_SPOT_BTC_USD$"], hb=True))
                busy = await collect(ws, 0.3)
                assert sum(m["type"] == spelling for m in busy) <= 1  # data flows: no beats
                await s.inject(Fault.HEARTBEATS_ONLY)
                await collect(ws, 0.05)
                quiet = await collect(ws, 0.5)
                assert len(quiet) >= 5 and all(m == {"type": spelling} for m in quiet)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("first", "reason"),
    [(req(key="nope"), INVALID_KEY), ('{"type":"hello","apikey":', "Invalid request")],
)
def test_bad_key_or_request_is_an_error_then_a_close(first, reason) -> None:
    async def main() -> None:
        async with srv() as s, connect(s.url) as ws:
            await ws.send(first)
            msg = json.loads(await ws.recv())
            assert msg["type"] == "error" and msg["message"].startswith(reason)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert s.errors_sent == 1

    asyncio.run(main())


def test_rate_limit_error_and_reconnect_notice_deadline() -> None:
    async def main() -> None:
        async with srv(reconnect_within=0.3) as s:
            await s.inject(Fault.REJECT_SUBSCRIBE)
            async with connect(s.url) as ws:
                await ws.send(req(symbols=["KRAKEN_SPOT_BTC_USD$"]))
                assert json.loads(await ws.recv())["type"] == "error"
                assert s.stats.rejected == 1
            s.clear()
            async with connect(s.url) as ws:
                await ws.send(req(symbols=["KRAKEN_SPOT_BTC_USD$"]))
                await s.inject(Fault.RECONNECT_NOTICE)
                msgs = await collect(ws, 0.6)
                notice = [m for m in msgs if m["type"] == "reconnect"]
                assert notice and notice[0]["within_seconds"] == 0.3
                assert len(notice[0]["before_time"]) == 28  # 7 fractional digits
                assert s.forced_closes == 1  # we stayed past the deadline: closed for us

    asyncio.run(main())
