"""KrakenFuturesParser and the product-id rules: exact records of every feed (frames shaped as
Kraken's documentation shows them), control messages, errors, and hypothesis fuzz."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.config import ConfigError, loads
from fairfeed.core.options import KrakenFuturesOptions, check
from fairfeed.core.records import (
    CLASS_FUTURE,
    CLASS_PERPETUAL,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    empty_records,
)
from fairfeed.providers.kraken_futures.parse import KrakenFuturesParser, Product
from fairfeed.providers.kraken_futures.symbols import contract, data_class, from_product, product_id
from fairfeed.providers.kraken_futures.wire import Alert, Answer, Error, Info, Other
from fairfeed.providers.parsing import CONTROL, HEARTBEAT, NEED_SPACE, PARSE_ERROR

TS = 1_700_000_000_123_456_789
PROV, VENUE = 3, 4
# PF_XBTUSD linear perpetual (1 BTC), PI_XBTUSD inverse perpetual (1 USD),
# FI_XBTUSD_210924 inverse future (1 USD), FF_ETHUSD_250328 linear future of 0.1 ETH
PRODUCTS = {
    "PF_XBTUSD": Product(10, CLASS_PERPETUAL, False, 1.0),
    "PI_XBTUSD": Product(11, CLASS_PERPETUAL, True, 1.0),
    "FI_XBTUSD_210924": Product(12, CLASS_FUTURE, True, 1.0),
    "FF_ETHUSD_250328": Product(13, CLASS_FUTURE, False, 0.1),
}


def parser() -> KrakenFuturesParser:
    return KrakenFuturesParser(PRODUCTS, PROV, VENUE)


def enc(msg: dict) -> bytes:
    return json.dumps(msg).encode()


def test_product_ids_both_ways():
    assert product_id("BTC-USD-PERP") == "PF_XBTUSD"
    assert product_id("ETH-USD-250328") == "FF_ETHUSD_250328"
    assert product_id("BTC-USD-PERP", {"BTC-USD-PERP": "pi_xbtusd"}) == "PI_XBTUSD"
    for pid in ("PF_XBTUSD", "PI_ETHUSD", "FI_XBTUSD_210924", "FF_SOLUSD_250328"):
        assert product_id(from_product(pid)) == pid[0] + "F" + pid[2:]  # the rule: linear
    assert from_product("PI_XBTUSD") == "BTC-USD-PERP"
    assert from_product("fi_ethusd_211231") == "ETH-USD-211231"
    assert from_product("PF_ETHUSDT") == "ETH-USDT-PERP"
    assert data_class("PI_XBTUSD") == "perpetual" and data_class("FF_XBTUSD_250328") == "future"
    for bad in ("BTC-USD", "BTC-USD-250", "btc-usd-perp", "BTC-USD-PERP-X"):
        with pytest.raises(ValueError):
            product_id(bad)
    for bad in ("IN_XBTUSD", "RR_XBTUSD", "PF_XBTUSD_250328", "FI_XBTUSD", "PF_"):
        with pytest.raises(ValueError):
            data_class(bad)


def test_contract_sizes_and_their_units():
    assert contract("PF_XBTUSD") == (False, 1.0) and contract("PI_XBTUSD") == (True, 1.0)
    assert contract("PF_XBTUSD", {"PF_XBTUSD": 0.001}) == (False, 0.001)
    assert contract("FI_XBTUSD_210924", {"FI_XBTUSD_210924": "100 quote"}) == (True, 100.0)
    with pytest.raises(ValueError, match="inverse"):
        contract("PI_XBTUSD", {"PI_XBTUSD": "1 base"})  # an inverse contract is quote units
    with pytest.raises(ValueError, match="linear"):
        contract("PF_XBTUSD", {"PF_XBTUSD": "1 quote"})


def test_options_are_checked_at_load():
    good = KrakenFuturesOptions(products={"BTC-USD-PERP": "PI_XBTUSD"},
                                contracts={"PF_XBTUSD": "0.5 base"})  # fmt: skip
    assert check(good) == []
    bad = KrakenFuturesOptions(products={"X": "IN_XBTUSD"}, contracts={"PF_XBTUSD": "lots"})
    assert [k for k, _ in check(bad)] == ["products.X", "contracts.PF_XBTUSD"]
    base = ('[[providers]]\nname = "kf"\nkind = "kraken_futures"\nvenue = "KRAKEN_FUTURES"\n'
            'url = "wss://futures.kraken.com/ws/v1"\ndata_class = "perpetual"\n'
            '[providers.options]\nproducts = {{ "ETH-USD-210924" = "FI_ETHUSD_210924" }}\n'
            '[[subscriptions]]\nprovider = "kf"\ninstruments = [{insts}]\n{extra}')  # fmt: skip
    [p] = loads(base.format(insts='"BTC-USD-PERP"', extra="")).providers
    assert p.options.products == {"ETH-USD-210924": "FI_ETHUSD_210924"}
    with pytest.raises(ConfigError, match="no Kraken Futures product for 'BTC-USD'"):
        loads(base.format(insts='"BTC-USD"', extra=""))
    with pytest.raises(ConfigError, match="FI_ETHUSD_210924, a future, subscribed as perpetual"):
        loads(base.format(insts='"ETH-USD-210924"', extra=""))  # a future as a perpetual
    loads(base.format(insts='"ETH-USD-210924"', extra='data_class = "future"\n'))
    with pytest.raises(ConfigError, match=r"contracts\.PF_XBTUSD"):
        loads(base.format(insts='"BTC-USD-PERP"', extra="").replace(
            "products = ", 'contracts = { PF_XBTUSD = "1 quote" }\nproducts = '))  # fmt: skip


def test_trades_exact_in_base_units():
    p = parser()
    out = empty_records(4)
    linear = {"feed": "trade", "product_id": "PF_XBTUSD", "uid": "u1", "side": "sell",
              "type": "fill", "seq": 655508, "time": 1612269825817, "qty": 0.25,
              "price": 34893.0}  # fmt: skip
    assert p.parse(enc(linear), out, 1, TS) == 1
    r = out[1]
    assert r.tolist() == (1612269825817000000, 0, TS, 34893.0, 0.25, 655508, 10, PROV, VENUE,
                          KIND_TRADE, CLASS_PERPETUAL, SIDE_SELL, 0, 0)  # fmt: skip
    inverse = dict(linear, product_id="PI_XBTUSD", side="buy", qty=15000.0, price=30000.0)
    assert p.parse(enc(inverse), out, 0, TS) == 1
    assert (out[0]["size"], out[0]["side"], out[0]["instrument"]) == (0.5, SIDE_BUY, 11)
    dated = dict(linear, product_id="FF_ETHUSD_250328", qty=30.0, price=2000.0)
    assert p.parse(enc(dated), out, 0, TS) == 1
    assert out[0]["size"] == pytest.approx(3.0) and out[0]["data_class"] == CLASS_FUTURE
    # a liquidation fill is a trade and a liquidation print (the forced order's side, unnumbered)
    assert p.parse(enc(dict(linear, type="liquidation")), out, 1, TS) == 2
    assert out[1].tolist() == r.tolist()
    want = (1612269825817000000, 0, TS, 34893.0, 0.25, SEQ_NONE, 10, PROV, VENUE,
            KIND_LIQUIDATION, CLASS_PERPETUAL, SIDE_SELL, 0, 0)  # fmt: skip
    assert out[2].tolist() == want
    for other in ("termination", "block"):  # fills of other kinds: trades only
        assert p.parse(enc(dict(linear, type=other)), out, 0, TS) == 1
    # history: nothing
    snap = {"feed": "trade_snapshot", "product_id": "PF_XBTUSD", "trades": [linear, linear]}
    assert p.parse(enc(snap), out, 0, TS) == 0


# The documentation's ticker example (support.kraken.com "Ticker", 2021)
TICKER = {
    "time": 1612270825253, "feed": "ticker", "product_id": "PI_XBTUSD", "bid": 34832.5,
    "ask": 34847.5, "bid_size": 42864, "ask_size": 2300, "volume": 262306237, "dtm": 0,
    "leverage": "50x", "index": 34803.45, "premium": 0.1, "last": 34852,
    "change": 2.995109121267192, "funding_rate": 3.891007752e-9,
    "funding_rate_prediction": 4.2233756e-9, "suspended": False, "tag": "perpetual",
    "pair": "XBT:USD", "openInterest": 107706940, "markPrice": 34844.25, "maturityTime": 0,
    "relative_funding_rate": 0.000135046879166667,
    "relative_funding_rate_prediction": 0.000146960125, "next_funding_rate_time": 1612281600000,
}  # fmt: skip


def test_ticker_exact_every_derivatives_kind():
    p = parser()
    out = empty_records(8)
    assert p.parse(enc(TICKER), out, 2, TS) == 6
    r = out[2:8]
    t = 1612270825253 * 1_000_000
    assert (r["ts_exchange"] == t).all() and (r["sequence"] == SEQ_NONE).all()
    assert (r["instrument"] == 11).all() and (r["data_class"] == CLASS_PERPETUAL).all()
    assert r["kind"].tolist() == [KIND_BID, KIND_ASK, KIND_MARK, KIND_INDEX, KIND_FUNDING,
                                  KIND_OPEN_INTEREST]  # fmt: skip
    # inverse: contracts of 1 USD -> base units at each record's own price (OI: the mark)
    assert r["price"].tolist()[:4] == [34832.5, 34847.5, 34844.25, 34803.45]
    assert r["size"].tolist()[:4] == [42864 / 34832.5, 2300 / 34847.5, 0.0, 0.0]
    fund = r[4]
    assert fund["price"] == 0.000135046879166667 and fund["size"] == 0.000146960125
    assert fund["reserved"] == 1612281600  # next funding, seconds since epoch
    assert r[5]["price"] == 0.0 and r[5]["size"] == 107706940 / 34844.25
    assert (r["side"] == 0).all() and (r["ts_provider"] == 0).all()


def test_ticker_variants():
    p = parser()
    out = empty_records(8)
    # a dated future: no funding record
    fut = {k: v for k, v in TICKER.items() if "funding" not in k}
    assert p.parse(enc(dict(fut, product_id="FI_XBTUSD_210924", tag="quarter")), out, 0, TS) == 5
    assert KIND_FUNDING not in out["kind"][:5].tolist()
    # linear perpetual: sizes are contracts x 1 BTC; zero funding is left out by Kraken
    lin = {k: v for k, v in TICKER.items() if not k.startswith("relative_funding")}
    lin.update(product_id="PF_XBTUSD", bid_size=1.5, ask_size=0.25, openInterest=1234.5)
    assert p.parse(enc(lin), out, 0, TS) == 6
    assert out["size"][:2].tolist() == [1.5, 0.25] and out[5]["size"] == 1234.5
    assert (out[4]["kind"], out[4]["price"], out[4]["size"]) == (KIND_FUNDING, 0.0, 0.0)
    # next_funding_rate_time as the time *until* it (ms): relative to the ticker's time
    rel = dict(TICKER, next_funding_rate_time=600_000)
    assert p.parse(enc(rel), out, 0, TS) == 6
    assert out[4]["reserved"] == (1612270825253 + 600_000) // 1000
    # no mark price: an inverse product's open interest cannot be converted, so is left out
    nomark = {k: v for k, v in TICKER.items() if k != "markPrice"}
    assert p.parse(enc(nomark), out, 0, TS) == 4
    assert out["kind"][:4].tolist() == [KIND_BID, KIND_ASK, KIND_INDEX, KIND_FUNDING]
    # ticker_lite (the capture's feed): quotes only, without size or time
    lite = {"feed": "ticker_lite", "product_id": "FI_XBTUSD_210924", "bid": 439.3, "ask": 439.6,
            "change": 2.64, "premium": 0.3, "volume": 3413476.0, "tag": "month"}  # fmt: skip
    assert p.parse(enc(lite), out, 0, TS) == 2
    assert out[:2][["ts_exchange", "price", "size", "kind"]].tolist() == [
        (0, 439.3, 0.0, KIND_BID), (0, 439.6, 0.0, KIND_ASK)]  # fmt: skip


def test_control_messages_and_errors():
    p = parser()
    out = empty_records(8)
    ans = {"event": "subscribed", "feed": "ticker", "product_ids": ["PI_XBTUSD"]}
    assert p.parse(enc(ans), out, 0, TS) == CONTROL
    assert p.control == Answer("subscribed", "ticker", ("PI_XBTUSD",))
    assert p.parse(b'{"event":"subscribed","feed":"heartbeat"}', out, 0, TS) == CONTROL
    assert p.control == Answer("subscribed", "heartbeat", ())
    assert p.parse(b'{"event":"error","message":"Invalid product id"}', out, 0, TS) == CONTROL
    assert p.control == Error("Invalid product id")
    assert p.parse(b'{"event":"alert","message":"Bad websocket message"}', out, 0, TS) == CONTROL
    assert p.control == Alert("Bad websocket message")
    assert p.parse(b'{"event":"info","version":1}', out, 0, TS) == CONTROL
    assert p.control == Info()
    assert p.parse(b'{"feed":"book","product_id":"PI_XBTUSD","seq":1}', out, 0, TS) == CONTROL
    assert p.control == Other("book", "")
    assert p.parse(b'{"feed":"heartbeat","time":1534262350627}', out, 0, TS) == HEARTBEAT
    assert p.parse(enc(TICKER), out, 3, TS) == NEED_SPACE and p.needed == 6
    trade = {"feed": "trade", "product_id": "PF_XBTUSD", "side": "buy", "seq": 1, "time": 1,
             "qty": 1.0, "price": 10.0}  # fmt: skip
    for bad in (dict(trade, product_id="PF_NOPEUSD"), dict(trade, side="up"),
                dict(trade, price=0), dict(trade, qty=-1), dict(trade, seq=-5),
                dict(trade, price="1"), dict(TICKER, markPrice=-1.0), dict(TICKER, bid=-1),
                dict(TICKER, openInterest=-3), dict(trade, time=2**62),
                dict(TICKER, next_funding_rate_time=1e14), {"foo": 1}):  # fmt: skip
        assert p.parse(enc(bad), out, 0, TS) == PARSE_ERROR, bad
        assert p.error
    assert p.parse(b"not json", out, 0, TS) == PARSE_ERROR


_price = st.floats(min_value=1e-8, max_value=1e9, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    pid=st.sampled_from(list(PRODUCTS)), buy=st.booleans(), price=_price, qty=_price,
    seq=st.integers(0, 2**63 - 1), ms=st.integers(0, 2**53),
    kind=st.sampled_from(["fill", "liquidation", "termination", "block", "other"]),
)  # fmt: skip
def test_valid_trades_are_exact(pid, buy, price, qty, seq, ms, kind):
    p = parser()
    out = empty_records(3)
    msg = {"feed": "trade", "product_id": pid, "side": "buy" if buy else "sell", "type": kind,
           "seq": seq, "time": ms, "qty": qty, "price": price}  # fmt: skip
    prod = PRODUCTS[pid]
    base = qty * prod.size / price if prod.inverse else qty * prod.size
    if ms * 1_000_000 >= 2**63:
        assert p.parse(enc(msg), out, 0, TS) == PARSE_ERROR
        return
    n = 2 if kind == "liquidation" else 1  # a liquidation fill is a trade and a liquidation
    assert p.parse(enc(msg), out, 0, TS) == n, p.error
    r = out[0]
    assert (r["instrument"], r["side"], r["price"], r["sequence"], r["ts_exchange"]) == (
        prod.instrument,
        SIDE_BUY if buy else SIDE_SELL,
        price,
        seq,
        ms * 1_000_000,
    )
    assert r["size"] == base and r["kind"] == KIND_TRADE
    if n == 2:
        liq = out[1]
        assert liq["kind"] == KIND_LIQUIDATION and liq["sequence"] == SEQ_NONE
        for f in ("instrument", "data_class", "side", "price", "size", "ts_exchange",
                  "ts_receive", "provider", "venue"):  # fmt: skip
            assert liq[f] == r[f], f
    assert out[n]["kind"] == 0  # nothing written past what was returned


def test_a_liquidation_fill_needs_room_for_both_records():
    p = parser()
    msg = {"feed": "trade", "product_id": "PI_XBTUSD", "side": "sell", "type": "liquidation",
           "seq": 7, "time": 1_700_000_000_000, "qty": 32000, "price": 64000.0}  # fmt: skip
    out = empty_records(2)
    assert p.parse(enc(msg), out, 1, TS) == NEED_SPACE and p.needed == 2
    assert p.parse(enc(msg), out, 0, TS) == 2
    # 32000 USD contracts of the inverse perpetual at 64000: 0.5 BTC closed by a forced sale
    assert out["kind"].tolist() == [KIND_TRADE, KIND_LIQUIDATION]
    assert out["size"].tolist() == [0.5, 0.5] and out["side"].tolist() == [SIDE_SELL] * 2


_field = st.one_of(
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=10),
    st.booleans(),
    st.none(),
    st.sampled_from([*PRODUCTS, "buy", "sell", "fill", "liquidation"]),
)
_keys = st.sampled_from(["product_id", "side", "type", "seq", "time", "qty", "price", "bid",
                         "ask", "bid_size", "ask_size", "index", "markPrice", "openInterest",
                         "relative_funding_rate", "relative_funding_rate_prediction",
                         "next_funding_rate_time", "product_ids", "message", "trades"])  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    feed=st.sampled_from(
        ["trade", "ticker", "ticker_lite", "heartbeat", "trade_snapshot", "book", ""]
    ),
    event=st.sampled_from(["", "subscribed", "error", "alert", "info", "other"]),
    fields=st.dictionaries(_keys, _field, max_size=10),
    raw=st.binary(max_size=64),
)
def test_fuzz_never_raises(feed, event, fields, raw):
    p = parser()
    out = empty_records(8)
    msg = {"feed": feed, "event": event, **fields}
    for m in (json.dumps(msg).encode(), raw):
        r = p.parse(m, out, 1, TS)
        assert r in (HEARTBEAT, CONTROL, PARSE_ERROR) or 0 <= r <= 6, r
        if r > 0:
            got = out[1 : 1 + r]
            assert np.isfinite(got["price"]).all() and np.isfinite(got["size"]).all()
            plain = got[got["kind"] != KIND_FUNDING]  # funding rates may be negative
            assert (plain["price"] >= 0).all() and (plain["size"] >= 0).all()
            assert (got["ts_receive"] == TS).all()
            assert set(got["instrument"].tolist()) <= {v.instrument for v in PRODUCTS.values()}
    assert not math.isnan(TS)
