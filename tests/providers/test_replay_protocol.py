"""The replay server's protocol mode: venue answers, frames split by subscription, each played
once, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from websockets.asyncio.client import connect

from fairfeed.local.capture import received
from fairfeed.local.replay import ReplayServer
from fairfeed.local.replayproto import Binance, CoinbaseAdvanced, CoinbaseExchange, Kraken

CAPTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"
EXCHANGE = CAPTURES / "COINBASE.ws.28.0"
ADVANCED = CAPTURES / "COINBASE.jsonl.zst"


def _data_frames(path: Path) -> list[str]:
    """The recorded frames that are not answers to the recording's own subscribe."""
    _, frames = received(path)
    return [t for _, t in frames if json.loads(t).get("type") != "subscriptions"]


async def _take(ws, n: int) -> list[str]:
    return [await asyncio.wait_for(ws.recv(), 10) for _ in range(n)]


def test_two_clients_split_the_capture_each_frame_once():
    frames = _data_frames(EXCHANGE)
    products = sorted({json.loads(t)["product_id"] for t in frames})
    half = set(products[::2])
    mine = [t for t in frames if json.loads(t)["product_id"] in half]
    theirs = [t for t in frames if json.loads(t)["product_id"] not in half]

    async def client(url: str, prods: set[str], n: int) -> tuple[dict, list[str]]:
        async with connect(url, max_size=None) as ws:
            sub = {"type": "subscribe", "product_ids": sorted(prods), "channels": ["matches"]}
            await ws.send(json.dumps(sub))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return answer, await _take(ws, n)

    async def go():
        srv = ReplayServer(EXCHANGE, speed=0, protocol=CoinbaseExchange(), expect=products)
        async with srv:
            (a1, got1), (a2, got2) = await asyncio.gather(
                client(srv.url, half, len(mine)),
                client(srv.url, set(products) - half, len(theirs)),
            )
            await asyncio.wait_for(srv.finished.wait(), 10)
            # a reconnect continues where the recording is: nothing is played twice
            async with connect(srv.url) as ws:
                sub = {"type": "subscribe", "product_ids": products, "channels": ["matches"]}
                await ws.send(json.dumps(sub))
                assert json.loads(await ws.recv())["type"] == "subscriptions"
                try:
                    extra = await asyncio.wait_for(ws.recv(), 0.3)
                except TimeoutError:
                    extra = None
                assert extra is None
        assert a1["type"] == a2["type"] == "subscriptions"
        assert a1["channels"][0]["product_ids"] == sorted(half)
        assert got1 == mine and got2 == theirs  # in recorded order, all of them, split

    asyncio.run(go())


def test_advanced_trade_renumbers_each_connection():
    async def go():
        srv = ReplayServer(ADVANCED, speed=0, protocol=CoinbaseAdvanced())
        async with srv, connect(srv.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-USD"],
                                      "channel": "market_trades"}))  # fmt: skip
            await asyncio.wait_for(srv.finished.wait(), 10)
            got = []
            while True:
                try:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 0.3)))
                except TimeoutError:
                    break
        assert got[0]["channel"] == "subscriptions"
        assert [m["sequence_num"] for m in got] == list(range(len(got)))
        trades = [t for m in got if m["channel"] == "market_trades"
                  for e in m["events"] for t in e["trades"]]  # fmt: skip
        assert trades and {t["product_id"] for t in trades} == {"ETH-USD"}

    asyncio.run(go())


def test_answers_of_binance_and_kraken():
    b, k = Binance(), Kraken()
    from fairfeed.local.replayproto import Client

    c = Client()
    out = b.on_client(c, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7})
    assert out == ['{"result":null,"id":7}'] and c.symbols == {"BTCUSDT"}
    assert b.frame_symbols({"stream": "btcusdt@trade", "data": {}}) == {"BTCUSDT"}
    assert b.frame_symbols({"result": None, "id": 1}) is None
    c = Client()
    msg = {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/USD"]},
           "req_id": 3}  # fmt: skip
    answers = [json.loads(a) for a in k.on_client(c, msg)]
    assert [a["result"]["symbol"] for a in answers] == ["BTC/USD", "ETH/USD"]
    assert all(a["success"] and a["req_id"] == 3 for a in answers)
    assert k.frame_symbols({"channel": "heartbeat"}) == frozenset()
