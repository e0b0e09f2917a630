"""The real Kraken Futures capture (2021-07-22, ten inverse products) → replay server in
protocol mode → the real KrakenFuturesAdapter over loopback.

The expected records are counted here, independently of the parser: plain ``json`` over the
recorded frames, contract sizes from the capture's own REST instrument list. The records must
equal them field by field (all but the local receive time, which is ours).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import KrakenFuturesOptions
from fairfeed.core.records import (
    CLASS_CODES,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_GAP,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    MAX_DATA_KIND,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    STATUS_CONNECTED,
    empty_records,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.capture import read_capture, received
from fairfeed.local.replay import ReplayServer
from fairfeed.local.replayproto import KrakenFutures
from fairfeed.providers.base import IngestContext
from fairfeed.providers.kraken_futures.adapter import KrakenFuturesAdapter
from fairfeed.providers.kraken_futures.symbols import (
    contracts_from_instruments,
    data_class,
    from_product,
)
from fairfeed.providers.parsing import PARSE_ERROR
from tests.providers.harness import Sink
from tests.waiting import wait_for_async as wait_for

CAPTURE = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"
CAPTURE = CAPTURE / "KRAKEN_FUTURES.jsonl.zst"
COLS = ("ts_exchange", "price", "size", "sequence", "instrument", "kind", "side", "reserved")
pytestmark = pytest.mark.timeout(60)


def rest_instruments() -> dict:
    """The recorded answer of /derivatives/api/v3/instruments."""
    [http] = [ev for ev in read_capture(CAPTURE) if ev.kind == "http"]
    assert http.url.endswith("/derivatives/api/v3/instruments")
    return json.loads(http.data)


def recorded_products() -> list[str]:
    """The product ids the recording's client subscribed (upper case, as in the messages)."""
    out: dict[str, None] = {}
    for ev in read_capture(CAPTURE):
        if ev.kind == "send":
            out.update(dict.fromkeys(p.upper() for p in json.loads(ev.data)["product_ids"]))
    return list(out)


def test_rest_list_gives_the_family_contract_sizes():
    answer = rest_instruments()
    contracts = contracts_from_instruments(answer)
    futures = [i for i in answer["instruments"] if i["type"] == "futures_inverse"]
    assert len(futures) == 17 and len(contracts) == 17  # indices (in_, rr_) left out
    # every product of the list is an inverse contract of 1 USD: the family default
    assert set(contracts.values()) == {"1 quote"}
    assert set(recorded_products()) <= set(contracts)


def expected(frames: list[tuple[int, str]], ids: dict[str, int], sizes: dict[str, float]):
    """Records of the recorded frames, by plain loops: trades (inverse: base = qty × contract
    size / price) and ticker_lite quotes (no size, no time); history and books give none."""
    out = []
    counted = {"trade_snapshot": 0, "book": 0, "book_snapshot": 0, "events": 0}
    for _, text in frames:
        m = json.loads(text)
        feed = m.get("feed")
        if "event" in m:
            counted["events"] += 1
        elif feed == "trade":
            pid = m["product_id"]
            side = {"buy": SIDE_BUY, "sell": SIDE_SELL}[m["side"]]
            base = m["qty"] * sizes[pid] / m["price"]
            out.append((m["time"] * 1_000_000, m["price"], base, m["seq"], ids[pid],
                        KIND_TRADE, side))  # fmt: skip
        elif feed == "ticker_lite":
            pid = m["product_id"]
            out.append((0, m["bid"], 0.0, SEQ_NONE, ids[pid], KIND_BID, 0))
            out.append((0, m["ask"], 0.0, SEQ_NONE, ids[pid], KIND_ASK, 0))
        else:
            counted[feed] += 1
    return out, counted


def test_capture_through_the_adapter_exact():
    products = recorded_products()
    names = {from_product(p): p for p in products}  # ETH-USD-PERP -> PI_ETHUSD, ...
    classes = {n: data_class(p) for n, p in names.items()}
    registry = Registry.build(
        [(n, CLASS_CODES[c]) for n, c in classes.items()], [("kf", "KRAKEN_FUTURES")]
    )
    answer = rest_instruments()
    contracts = contracts_from_instruments(answer)
    sizes = {i["symbol"].upper(): float(i["contractSize"])
             for i in answer["instruments"] if "contractSize" in i}  # fmt: skip
    ids = {p: registry.instrument_id(n) for n, p in names.items()}
    _, frames = received(CAPTURE)
    want, counted = expected(frames, ids, sizes)
    kinds = [w[5] for w in want]
    # The capture, counted: 3 live trades (1000 more in ten trade_snapshots: history), 107
    # ticker_lite quotes, 10 book snapshots and 7014 book updates, 31 events.
    assert (kinds.count(KIND_TRADE), kinds.count(KIND_BID), kinds.count(KIND_ASK)) == (3, 107, 107)
    assert counted == {"trade_snapshot": 10, "book": 7014, "book_snapshot": 10, "events": 31}

    options = KrakenFuturesOptions(products=names, contracts=contracts, ping_interval=0)

    async def main():
        srv = ReplayServer(CAPTURE, speed=0, keep_open=True, protocol=KrakenFutures(),
                           expect=products)  # fmt: skip
        async with srv:
            provider = ProviderConfig(name="kf", kind="kraken_futures", venue="KRAKEN_FUTURES",
                                      url=srv.url, options=options)  # fmt: skip
            subs = tuple(
                Subscription.resolve(registry, "kf", "KRAKEN_FUTURES", n, c)
                for n, c in classes.items()
            )
            sink, counters = Sink(), DictCounters()
            ctx = IngestContext(
                provider=provider, url=srv.url, subscriptions=subs, registry=registry,
                emit=sink, counters=counters, dead_letter=sink.dead_letter,
            )  # fmt: skip
            adapter = KrakenFuturesAdapter(ctx)
            task = asyncio.create_task(adapter.run())
            await asyncio.wait_for(srv.finished.wait(), 30)  # the whole capture played
            await wait_for(lambda: counters[Slot.FRAMES_IN] >= srv.sent, what="all read")
            # the playback may end before the last (paced) request is answered
            await wait_for(lambda: sink.status(STATUS_CONNECTED), what="every answer")
            await adapter.close()
            await task
            return sink, counters

    sink, counters = asyncio.run(main())
    r = sink.all
    data = r[r["kind"] <= MAX_DATA_KIND]
    cols = ("ts_exchange", "price", "size", "sequence", "instrument", "kind", "side")
    got = list(zip(*(data[c].tolist() for c in cols), strict=True))
    assert got == want
    assert (data["ts_provider"] == 0).all() and (data["reserved"] == 0).all()
    assert (data["venue"] == registry.venue_id("KRAKEN_FUTURES")).all()
    by_inst = {registry.instrument_id(n): CLASS_CODES[c] for n, c in classes.items()}
    assert [by_inst[i] for i in data["instrument"].tolist()] == data["data_class"].tolist()
    trades = data[data["kind"] == KIND_TRADE]
    np.testing.assert_allclose(trades["size"] * trades["price"], [320.0, 50.0, 40.0])  # USD
    assert not sink.dead and counters[Slot.PARSE_ERRORS] == 0
    assert not len(sink.kind(KIND_GAP))
    assert sink.status(STATUS_CONNECTED) == 1


def test_record_a_local_server_then_replay_it_through_the_adapter(tmp_path):
    """`fairfeed record` of the kind (the adapter's own requests to a local server), then the
    recording replayed through the adapter: the records are those parsed from the recording."""
    from fairfeed.core.config import SimulatorConfig, load
    from fairfeed.daemon.record import record
    from fairfeed.daemon.run import build_registry
    from fairfeed.local.kraken_futures import KrakenFuturesServer
    from fairfeed.local.recordfmt import capture_provider
    from fairfeed.local.thread import LoopThread
    from fairfeed.providers.kraken_futures.parse import KrakenFuturesParser

    prices = {"BTC-USD-PERP": 64000.0, "ETH-USD-INV": 3000.0}
    products = {"ETH-USD-INV": "PI_ETHUSD"}
    server = KrakenFuturesServer("kf", SimulatorConfig(prices=prices, rate=300.0, seed=3),
                                 products=products)  # fmt: skip
    text = ('[[providers]]\nname = "kf"\nkind = "kraken_futures"\nvenue = "KRAKEN_FUTURES"\n'
            'data_class = "perpetual"\nurl = "{url}"\n'
            '[providers.options]\nproducts = {{ "ETH-USD-INV" = "PI_ETHUSD" }}\n'
            '[[subscriptions]]\nprovider = "kf"\n'
            'instruments = ["BTC-USD-PERP", "ETH-USD-INV"]\n')  # fmt: skip
    live = tmp_path / "live.toml"
    capture = tmp_path / "kf.jsonl.zst"
    with LoopThread(server).start():
        live.write_text(text.format(url=server.url))
        frames = record(load(live), capture, 1.5)
    assert frames > 50
    assert capture_provider(capture) == ("kraken_futures", "", "KRAKEN_FUTURES",
                                         ["BTC-USD-PERP", "ETH-USD-INV"])  # fmt: skip
    cfg = load(live)
    registry = build_registry(cfg)
    [p] = cfg.providers
    subs = tuple(Subscription.resolve(registry, "kf", s.venue, s.instrument, s.data_class)
                 for s in cfg.streams())  # fmt: skip
    parser = KrakenFuturesParser.for_subscriptions(subs, products=products)
    out = empty_records(16)
    want = []
    for _, frame in received(capture)[1]:
        n = parser.parse(frame.encode(), out, 0, 1)
        assert n != PARSE_ERROR, parser.error
        want += [tuple(r[c].item() for c in COLS) for r in out[: max(n, 0)]]
    kinds = {w[5] for w in want}
    assert {KIND_TRADE, KIND_BID, KIND_MARK, KIND_FUNDING, KIND_OPEN_INTEREST} <= kinds

    async def main():
        srv = ReplayServer(capture, speed=0, keep_open=True, protocol=KrakenFutures(),
                           expect={"PF_XBTUSD", "PI_ETHUSD"})  # fmt: skip
        async with srv:
            sink, counters = Sink(), DictCounters()
            ctx = IngestContext(
                provider=dataclasses.replace(p, url=srv.url), url=srv.url, subscriptions=subs,
                registry=registry, emit=sink, counters=counters, dead_letter=sink.dead_letter,
            )  # fmt: skip
            adapter = KrakenFuturesAdapter(ctx)
            task = asyncio.create_task(adapter.run())
            await asyncio.wait_for(srv.finished.wait(), 30)
            await wait_for(lambda: counters[Slot.FRAMES_IN] >= srv.sent, what="all read")
            await adapter.close()
            await task
            return sink

    sink = asyncio.run(main())
    r = sink.all
    r = r[r["kind"] <= MAX_DATA_KIND]
    assert [tuple(x[c].item() for c in COLS) for x in r] == want
    assert not sink.dead
