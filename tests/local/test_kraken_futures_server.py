"""The local Kraken Futures server on its own, over a plain WebSocket client on loopback: the
v1 protocol the adapter relies on (info, per-product answers, errors, heartbeat feed, contracts
on the wire), its place in the local catalog, and the replay protocol's answers."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from fairfeed.core.config import SimulatorConfig, loads
from fairfeed.local.catalog import local_server, wire_symbols
from fairfeed.local.kraken_futures import KrakenFuturesServer
from fairfeed.local.replayproto import ANSWER, Client, KrakenFutures, kind_of_url, protocol_for

PRICES = {"BTC-USD-PERP": 64000.0, "ETH-USD-PERP": 3000.0, "ETH-USD-270326": 3010.0}
PRODUCTS = {"ETH-USD-PERP": "PI_ETHUSD"}
pytestmark = pytest.mark.timeout(30)


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def until(ws, pred) -> dict:
    while not pred(m := await recv(ws)):
        pass
    return m


def test_protocol():
    cfg = SimulatorConfig(prices=PRICES, rate=400, quote_ratio=0.5, seed=1)

    async def main():
        srv = KrakenFuturesServer("kf", cfg, products=PRODUCTS, heartbeat_interval=0.05)
        async with srv, connect(srv.url) as ws:
            assert await recv(ws) == {"event": "info", "version": 1}
            await ws.send('{"event":"subscribe","feed":"heartbeat"}')
            assert await recv(ws) == {"event": "subscribed", "feed": "heartbeat"}
            assert (await recv(ws))["feed"] == "heartbeat"
            sub = {"event": "subscribe", "feed": "trade", "product_ids": ["PI_ETHUSD", "pf_xbtusd"]}
            await ws.send(json.dumps(sub))
            answers = [await until(ws, lambda m: m.get("event")) for _ in range(2)]
            assert [a["product_ids"] for a in answers] == [["PI_ETHUSD"], ["PF_XBTUSD"]]
            assert all(a["event"] == "subscribed" and a["feed"] == "trade" for a in answers)
            # inverse: whole USD contracts on the wire; linear: BTC
            inv = await until(ws, lambda m: m.get("product_id") == "PI_ETHUSD"
                              and m["feed"] == "trade" and "event" not in m)  # fmt: skip
            assert inv["qty"] == int(inv["qty"]) >= 1 and inv["type"] == "fill"
            await until(ws, lambda m: m.get("product_id") == "PF_XBTUSD" and m["feed"] == "trade")
            await ws.send(
                '{"event":"subscribe","feed":"ticker","product_ids":["FF_ETHUSD_270326"]}'
            )
            tick = await until(ws, lambda m: m.get("feed") == "ticker" and "event" not in m)
            assert tick["product_id"] == "FF_ETHUSD_270326" and "relative_funding_rate" not in tick
            assert {"bid", "ask", "bid_size", "ask_size", "markPrice", "index", "openInterest",
                    "time"} <= set(tick)  # fmt: skip
            await ws.send('{"event":"subscribe","feed":"ticker","product_ids":["PI_ETHUSD"]}')
            tick = await until(ws, lambda m: m.get("feed") == "ticker"
                               and m.get("product_id") == "PI_ETHUSD")  # fmt: skip
            assert tick["next_funding_rate_time"] % 3_600_000 == 0 > -tick["time"]
            errors = []
            for bad in ('{"event":"subscribe","feed":"trade","product_ids":["PF_NOPEUSD"]}',
                        '{"event":"subscribe","feed":"books","product_ids":["PI_ETHUSD"]}',
                        "not json"):  # fmt: skip
                await ws.send(bad)
                errors.append(await until(ws, lambda m: m.get("event") == "error"))
            assert [e["message"] for e in errors] == ["Invalid product id", "Invalid feed",
                                                     "Json Error"]  # fmt: skip
            assert srv.errors == 3
            await ws.send('{"event":"unsubscribe","feed":"trade","product_ids":["PI_ETHUSD"]}')
            ans = await until(ws, lambda m: m.get("event"))
            assert ans == {"event": "unsubscribed", "feed": "trade", "product_ids": ["PI_ETHUSD"]}

    asyncio.run(main())


def test_served_from_the_configuration():
    cfg = loads(
        '[[providers]]\nname = "kf"\nkind = "kraken_futures"\nvenue = "KRAKEN_FUTURES"\n'
        'data_class = "perpetual"\n'
        '[providers.options]\nproducts = { "ETH-USD-PERP" = "PI_ETHUSD" }\n'
        '[providers.serve]\nprices = { "BTC-USD-PERP" = 64000.0, "ETH-USD-PERP" = 3000.0 }\n'
        '[[subscriptions]]\nprovider = "kf"\ninstruments = ["BTC-USD-PERP", "ETH-USD-PERP"]\n'
    )
    [p] = cfg.providers
    srv = local_server(cfg, p, 0)
    assert isinstance(srv, KrakenFuturesServer)
    assert srv.wire == ["PF_XBTUSD", "PI_ETHUSD"] and srv.specs == [(False, 1.0), (True, 1.0)]
    assert wire_symbols(cfg, p) == {"PF_XBTUSD", "PI_ETHUSD"}


def test_replay_protocol_answers_per_product():
    proto = protocol_for("kraken_futures")
    assert isinstance(proto, KrakenFutures)
    assert kind_of_url("wss://futures.kraken.com/ws/v1") == ("kraken_futures", "")
    c = Client()
    msg = {"event": "subscribe", "feed": "trade", "product_ids": ["pi_xbtusd", "fi_xbtusd_210924"]}
    answers = [json.loads(a) for a in proto.on_client(c, msg)]
    assert answers == [
        {"event": "subscribed", "feed": "trade", "product_ids": ["PI_XBTUSD"]},
        {"event": "subscribed", "feed": "trade", "product_ids": ["FI_XBTUSD_210924"]},
    ]
    assert c.symbols == {"PI_XBTUSD", "FI_XBTUSD_210924"}
    assert json.loads(proto.on_client(c, {"event": "subscribe", "feed": "heartbeat"})[0]) == {
        "event": "subscribed", "feed": "heartbeat"}  # fmt: skip
    assert proto.frame_symbols({"event": "subscribed", "feed": "trade"}) is ANSWER
    assert proto.frame_symbols({"event": "error", "message": "x"}) is ANSWER
    assert proto.frame_symbols({"event": "info", "version": 1}) == frozenset()
    assert proto.frame_symbols({"feed": "book", "product_id": "PI_XBTUSD"}) == {"PI_XBTUSD"}
