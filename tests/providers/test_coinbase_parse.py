"""Coinbase parsers: semantics on hand-made frames, exact timestamps, and no exception ever."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_TRADE,
    NO_INSTRUMENT,
    SIDE_BUY,
    SIDE_SELL,
    empty_records,
)
from fairfeed.local.capture import received, seconds_to_ns
from fairfeed.providers.coinbase.parse import (
    CONTROL,
    NEED_SPACE,
    PARSE_ERROR,
    AdvancedTradeParser,
    ExchangeFeedParser,
    go_time_to_ns,
    iso_to_ns,
)
from fairfeed.providers.coinbase.symbols import from_product_id, to_product_id

SYMS = {"BTC-USD": 3, "ETH-USD": 7}
TS = 1_700_000_000_123_456_789
CAPTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"


def ex() -> ExchangeFeedParser:
    return ExchangeFeedParser(SYMS, 2, 5, CLASS_SPOT)


def at(**kw) -> AdvancedTradeParser:
    return AdvancedTradeParser(SYMS, 2, 5, CLASS_SPOT, **kw)


def match(**over):
    m = {"type": "match", "trade_id": 881613, "maker_order_id": "a", "taker_order_id": "b",
         "side": "sell", "size": "0.04", "price": "14.7775", "product_id": "BTC-USD",
         "sequence": 333938798, "time": "2021-04-17T16:43:30.244075Z"}  # fmt: skip
    m.update(over)
    return json.dumps({k: v for k, v in m.items() if v is not None}).encode()


def ticker(**over):
    m = {"type": "ticker", "sequence": 12, "product_id": "ETH-USD", "price": "3000.5",
         "best_bid": "3000.1", "best_ask": "3000.2", "side": "buy", "trade_id": 77,
         "time": "2021-04-17T16:43:30.5Z", "last_size": "0.1"}  # fmt: skip
    m.update(over)
    return json.dumps({k: v for k, v in m.items() if v is not None}).encode()


def at_msg(channel, events, seq=5, timestamp="2026-08-09T21:05:48.251397169Z"):
    return json.dumps({"channel": channel, "timestamp": timestamp, "sequence_num": seq,
                       "events": events}).encode()  # fmt: skip


def at_trade(tid="1068572091", side="SELL", price="65083.67", size="0.01034361",
             time="2026-08-09T21:05:48.167634Z", product="BTC-USD"):  # fmt: skip
    return {"product_id": product, "trade_id": tid, "price": price, "size": size, "time": time,
            "side": side}  # fmt: skip


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-04-17T16:43:30.244075Z", 1618677810244075000),  # 6 digits (Exchange feed)
        ("2026-08-09T21:05:48.228568804Z", 1786309548228568804),  # 9 digits (Advanced Trade)
        ("2026-08-09T21:05:38.50436Z", 1786309538504360000),  # 5 digits (trailing 0 dropped)
        ("2026-08-09T21:05:38Z", 1786309538000000000),
        ("1970-01-01T00:00:00.000000001Z", 1),
        ("2024-02-29T23:59:59.999999999Z", 1709251199999999999),
    ],
)
def test_iso_to_ns_exact(text, expected):
    assert iso_to_ns(text) == expected
    assert int(np.datetime64(text[:-1], "ns").astype(np.int64)) == expected


@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(0, 999_999_999),
    st.integers(0, 9),
)
def test_iso_to_ns_matches_numpy(dt, nanos, digits):
    frac = f"{nanos:09d}"[:digits]
    text = dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if digits else "") + "Z"
    assert iso_to_ns(text) == int(np.datetime64(text[:-1], "ns").astype(np.int64))


@pytest.mark.parametrize(
    "text",
    ["", "2021-04-17", "2021-04-17T16:43:30.244075", "2021-04-17T16:43:30.1234567890Z",
     "2021-04-17T16:43:3x.1Z", "2021-04-17T16:43:30,1Z", "2021-13-17T16:43:30Z",
     "2021-04-17 16:43:30Z", "2021-04-17T16:43:30.+1Z", "2021-04-17T16:43:30.١Z",
     "２021-04-17T16:43:30Z", "2021-04-17T16:43:30.Z"],
)  # fmt: skip
def test_iso_to_ns_rejects(text):
    with pytest.raises(ValueError):
        iso_to_ns(text)


def test_go_time_and_capture_seconds():
    assert go_time_to_ns("2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341") == (
        1786309548854840045
    )
    assert seconds_to_ns("1618677817.0618958") == 1618677817061895800
    assert seconds_to_ns("1786309548") == 1786309548 * 10**9


def test_symbols():
    assert to_product_id("BTC-USD") == from_product_id("BTC-USD") == "BTC-USD"
    for bad in ("btc-usd", "BTCUSD", "BTC-", "BTC-USD-X", "BTC/USD"):
        with pytest.raises(ValueError):
            to_product_id(bad)


# --- Exchange feed ---------------------------------------------------------------------------


def test_exchange_last_match_is_history_not_a_trade():
    """``last_match`` (sent on every (re)connect: the product's last trade, maybe minutes old,
    maybe already published) writes nothing."""
    out = empty_records(2)
    out["kind"] = 99
    assert ex().parse(match(side="buy", type="last_match"), out, 0, TS) == 0
    assert (out["kind"] == 99).all()


def test_exchange_match_taker_is_opposite_of_maker_side():
    out = empty_records(4)
    p = ex()
    assert p.parse(match(side="sell"), out, 0, TS) == 1
    assert p.parse(match(side="buy"), out, 1, TS) == 1
    r = out[0]
    assert r["kind"] == KIND_TRADE and r["side"] == SIDE_BUY
    assert out[1]["side"] == SIDE_SELL
    assert r["price"] == 14.7775 and r["size"] == 0.04  # string numbers, exactly float(str)
    assert r["sequence"] == 333938798 and r["reserved"] == 881613
    assert r["ts_exchange"] == 1618677810244075000 and r["ts_provider"] == 0
    assert r["ts_receive"] == TS and r["instrument"] == 3
    assert (r["provider"], r["venue"], r["data_class"]) == (2, 5, CLASS_SPOT)


def test_exchange_trade_sequence_option_puts_trade_id_in_sequence():
    out = empty_records(1)
    p = ExchangeFeedParser(SYMS, 2, 5, CLASS_SPOT, trade_sequence=True)
    assert p.parse(match(), out, 0, TS) == 1
    assert out[0]["sequence"] == 881613 and out[0]["reserved"] == 333938798


def test_exchange_ticker_bid_ask_with_and_without_sizes():
    out = empty_records(4)
    p = ex()
    assert p.parse(ticker(), out, 0, TS) == 2
    assert list(out["kind"][:2]) == [KIND_BID, KIND_ASK]
    assert list(out["price"][:2]) == [3000.1, 3000.2] and list(out["size"][:2]) == [0, 0]
    assert list(out["sequence"][:2]) == [12, 12] and out[0]["instrument"] == 7
    assert out[0]["ts_exchange"] == 1618677810500000000
    n = p.parse(ticker(best_bid_size="1.5", best_ask_size="2.25"), out, 2, TS)
    assert n == 2 and list(out["size"][2:4]) == [1.5, 2.25]


def test_exchange_heartbeat_record():
    out = empty_records(1)
    hb = {"type": "heartbeat", "sequence": 90, "last_trade_id": 20, "product_id": "BTC-USD",
          "time": "2014-11-07T08:19:28.464459Z"}  # fmt: skip
    p = ex()
    assert p.heartbeats == 0
    assert p.parse(json.dumps(hb), out, 0, TS) == 1
    assert (p.heartbeats, p.gaps, p.missed) == (1, 0, 0)  # the totals the WebSocket base counts
    r = out[0]
    assert r["kind"] == KIND_HEARTBEAT and r["instrument"] == 3 and r["sequence"] == 90
    assert r["reserved"] == 20 and r["ts_provider"] == r["ts_exchange"] == 1415348368464459000


def test_exchange_control_and_ignored():
    out = empty_records(2)
    p = ex()
    assert p.parse(b'{"type":"subscriptions","channels":[]}', out, 0, TS) == CONTROL
    assert p.parse(b'{"type":"error","message":"Failed","reason":"bad"}', out, 0, TS) == CONTROL
    assert p.control.message == "Failed"
    l2 = b'{"type":"l2update","product_id":"BTC-USD","changes":[["sell","1","2"]],"time":"x"}'
    assert p.parse(l2, out, 0, TS) == 0
    snap = b'{"type":"snapshot","product_id":"BTC-USD","bids":[["1","2"]],"asks":[]}'
    assert p.parse(snap, out, 0, TS) == 0


@pytest.mark.parametrize(
    "frame",
    [match(side=None), match(price=None), match(size=None), match(time=None),
     match(sequence=None), match(trade_id=None), match(product_id="DOGE-USD"),
     match(side="up"), match(price="abc"), match(price="-1"), match(price="nan"),
     match(time="2021-04-17T16:43:30.244075"), match(sequence=2**70), ticker(best_ask=None),
     ticker(best_bid="0"), b"", b"[]", b"{", b'{"type": 3}', b"\xff\xfe"],
)  # fmt: skip
def test_exchange_malformed_is_a_counted_error(frame):
    p = ex()
    assert p.parse(frame, empty_records(4), 0, TS) == PARSE_ERROR
    assert p.error


def test_exchange_need_space():
    p = ex()
    assert p.parse(ticker(), empty_records(3), 2, TS) == NEED_SPACE and p.needed == 2
    assert p.parse(ticker(), empty_records(3), 1, TS) == 2


# --- Advanced Trade --------------------------------------------------------------------------


def test_advanced_trades_taker_side_order_and_clocks():
    out = empty_records(8)
    p = at()
    frame = at_msg("market_trades", [{"type": "update", "trades": [
        at_trade(tid="11", side="BUY", time="2026-08-09T21:05:48.2Z"),
        at_trade(tid="10", side="SELL", time="2026-08-09T21:05:48.1Z")]}])  # fmt: skip
    assert p.parse(frame, out, 0, TS) == 2
    assert list(out["sequence"][:2]) == [10, 11]  # oldest first
    assert list(out["side"][:2]) == [SIDE_BUY, SIDE_SELL]  # SELL maker → BUY taker
    assert list(out["ts_exchange"][:2]) == [1786309548100000000, 1786309548200000000]
    assert (out["ts_provider"][:2] == 1786309548251397169).all()
    assert out[0]["price"] == 65083.67 and out[0]["size"] == 0.01034361


def test_advanced_side_as_is_option_and_snapshot_option():
    snap = at_msg("market_trades", [{"type": "snapshot", "trades": [at_trade()]}])
    out = empty_records(2)
    assert at().parse(snap, out, 0, TS) == 0
    p = at(snapshot_trades=True, side_is_maker=False)
    assert p.parse(snap, out, 0, TS) == 1 and out[0]["side"] == SIDE_SELL


def test_advanced_ticker_and_heartbeat():
    out = empty_records(4)
    p = at()
    tk = {"type": "ticker", "product_id": "ETH-USD", "price": "1919.41", "best_bid": "1919.44",
          "best_ask": "1919.49", "best_bid_quantity": "0.02858092",
          "best_ask_quantity": "0.07814824"}  # fmt: skip
    assert p.parse(at_msg("ticker", [{"type": "update", "tickers": [tk]}], seq=10), out, 0, TS) == 2
    assert list(out["kind"][:2]) == [KIND_BID, KIND_ASK]
    assert list(out["size"][:2]) == [0.02858092, 0.07814824]
    assert list(out["sequence"][:2]) == [10, 10] and out[0]["ts_exchange"] == 0
    hb = at_msg("heartbeats", [{"current_time": "2026-08-09 21:05:48.854840045 +0000 UTC m=+1.2",
                                "heartbeat_counter": 41691}], seq=11)  # fmt: skip
    assert p.heartbeats == 0
    assert p.parse(hb, out, 2, TS) == 1
    assert p.heartbeats == 1
    r = out[2]
    assert r["kind"] == KIND_HEARTBEAT and r["instrument"] == NO_INSTRUMENT
    assert r["sequence"] == 41691 and r["ts_exchange"] == 1786309548854840045


def test_advanced_sequence_gap_per_connection():
    out = empty_records(8)
    p = at()
    sub = json.dumps({"channel": "subscriptions", "timestamp": "2026-08-09T21:05:48Z",
                      "sequence_num": 0, "events": [{"subscriptions": {}}]})  # fmt: skip
    assert p.parse(sub, out, 0, TS) == CONTROL
    l2 = at_msg("l2_data", [{"type": "update", "product_id": "BTC-USD", "updates": []}], seq=1)
    assert p.parse(l2, out, 0, TS) == 0
    # 2, 3, 4 lost; an ignored channel still reports the gap
    assert p.parse(at_msg("l2_data", [], seq=5), out, 0, TS) == 1
    g = out[0]
    assert g["kind"] == KIND_GAP and g["sequence"] == 5 and g["size"] == 3
    assert g["instrument"] == NO_INSTRUMENT
    assert (p.gaps, p.missed) == (1, 3)  # declared totals, read by the WebSocket base
    # a gap before a data message is written ahead of its records
    n = p.parse(at_msg("market_trades", [{"type": "update", "trades": [at_trade()]}], seq=8),
                out, 0, TS)  # fmt: skip
    assert n == 2 and out[0]["kind"] == KIND_GAP and out[0]["size"] == 2
    assert out[1]["kind"] == KIND_TRADE
    # a gap seen on a control message is written with the next message
    sub2 = sub.replace('"sequence_num": 0', '"sequence_num": 10')
    assert p.parse(sub2, out, 0, TS) == CONTROL
    assert p.parse(at_msg("l2_data", [], seq=11), out, 0, TS) == 1 and out[0]["size"] == 1
    assert (p.gaps, p.missed) == (3, 6)
    # numbering restarting (reconnect without reset) is not a gap; reset() forgets
    assert p.parse(at_msg("l2_data", [], seq=0), out, 0, TS) == 0
    p.reset()
    assert p.parse(at_msg("l2_data", [], seq=50), out, 0, TS) == 0


def test_advanced_need_space_keeps_the_gap():
    p = at()
    assert p.parse(at_msg("l2_data", [], seq=1), empty_records(1), 0, TS) == 0
    frame = at_msg("market_trades", [{"type": "update", "trades": [at_trade(), at_trade()]}], 4)
    assert p.parse(frame, empty_records(2), 0, TS) == NEED_SPACE and p.needed == 3
    assert p.gaps == 0  # nothing written yet: not counted
    out = empty_records(3)
    assert p.parse(frame, out, 0, TS) == 3 and out[0]["kind"] == KIND_GAP
    assert (p.gaps, p.missed) == (1, 2)


@pytest.mark.parametrize(
    "frame",
    [at_msg("market_trades", [{"type": "update", "trades": [at_trade(side="X")]}]),
     at_msg("market_trades", [{"type": "update", "trades": [at_trade(price="x")]}]),
     at_msg("market_trades", [{"type": "update", "trades": [at_trade(time="yesterday")]}]),
     at_msg("market_trades", [{"type": "update", "trades": [at_trade(product="XRP-USD")]}]),
     at_msg("market_trades", [{"type": "update", "trades": [{"product_id": "BTC-USD"}]}]),
     at_msg("market_trades", [{"type": "update", "trades": [at_trade(tid="-3")]}]),
     at_msg("ticker", [{"type": "update", "tickers": [{"product_id": "BTC-USD"}]}]),
     at_msg("market_trades", [], timestamp="now"),
     b'{"events": []}', b"null", b'{"channel": "ticker", "events": 5}'],
)  # fmt: skip
def test_advanced_malformed_is_a_counted_error(frame):
    p = at()
    assert p.parse(frame, empty_records(8), 0, TS) == PARSE_ERROR
    assert p.error


def test_advanced_error_answer_is_control():
    p = at()
    assert p.parse(b'{"type":"error","message":"failure to subscribe"}', empty_records(1), 0,
                   TS) == CONTROL  # fmt: skip
    assert p.control.message == "failure to subscribe"


# --- fuzz: any input yields records or a result code, never an exception ---------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12,
)  # fmt: skip


def _real_frames(name: str, limit: int) -> list[dict]:
    path = CAPTURES / name
    if not path.exists():
        return [json.loads(match()), json.loads(ticker())]
    frames = [json.loads(t) for _, t in received(path)[1] if len(t) < 4000]
    book = [f for f in frames if f.get("type") == "l2update" or f.get("channel") == "l2_data"]
    rest = [f for f in frames if f not in book]
    return rest[:limit] + book[:: max(1, len(book) // 20)]


EX_FRAMES = [*_real_frames("COINBASE.ws.28.0", 200), json.loads(match()), json.loads(ticker())]
AT_FRAMES = _real_frames("COINBASE.jsonl.zst", 200)


def mutate(obj, path_choice, value):
    """Replace (or delete, value=...) one node of a JSON tree, chosen by ``path_choice``."""
    nodes = []

    def walk(o):
        if isinstance(o, dict):
            for k in o:
                nodes.append((o, k))
                walk(o[k])
        elif isinstance(o, list):
            for i in range(len(o)):
                nodes.append((o, i))
                walk(o[i])

    walk(obj)
    if nodes:
        parent, key = nodes[path_choice % len(nodes)]
        if value is Ellipsis:
            del parent[key]
        else:
            parent[key] = value
    return obj


def check(p, data: bytes, start: int, size: int):
    out = empty_records(size)
    guard = np.frombuffer(np.random.default_rng(0).bytes(size * 64), np.uint8).copy()
    out.view(np.uint8)[:] = guard
    n = p.parse(data, out, start, TS)
    assert isinstance(n, int)
    if n >= 0:
        assert start + n <= size
        raw = out.view(np.uint8)
        # nothing outside [start, start + n) was touched
        assert (raw[: start * 64] == guard[: start * 64]).all()
        assert (raw[(start + n) * 64 :] == guard[(start + n) * 64 :]).all()
    else:
        assert n in (PARSE_ERROR, CONTROL, NEED_SPACE)
        if n == PARSE_ERROR:
            assert p.error
        if n == NEED_SPACE:
            assert start + p.needed > size


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 4))
def test_fuzz_bytes(data, start):
    for p in (ex(), at()):
        check(p, data, start, 4)


@FUZZ
@given(st.sampled_from(EX_FRAMES + AT_FRAMES), st.integers(0, 10**6),
       json_values | st.just(Ellipsis), st.integers(0, 3))  # fmt: skip
def test_fuzz_mutated_real_frames(frame, where, value, start):
    obj = mutate(json.loads(json.dumps(frame)), where, value)
    try:
        data = json.dumps(obj, allow_nan=True).encode()
    except (ValueError, TypeError):
        return
    for p in (ex(), at(snapshot_trades=True)):
        p.symbols.update({"BAND-GBP": 1, "SKL-BTC": 2, "SKL-USD": 4, "DASH-BTC": 5})
        check(p, data, start, 4)


@FUZZ
@given(st.sampled_from(EX_FRAMES + AT_FRAMES), st.integers(0, 10**6), st.integers(1, 40))
def test_fuzz_truncated_real_frames(frame, cut, room):
    data = json.dumps(frame).encode()
    data = data[: cut % (len(data) + 1)]
    for p in (ex(), at()):
        check(p, data, 0, room)


def test_capture_timestamps_exact_against_numpy():
    """Every timestamp string of both captures converts exactly (numpy as the oracle)."""
    seen = 0
    for frame in EX_FRAMES + AT_FRAMES:
        for key in ("time", "timestamp"):
            if isinstance(frame.get(key), str):
                text = frame[key]
                assert iso_to_ns(text) == int(np.datetime64(text[:-1], "ns").astype(np.int64))
                seen += 1
    assert seen > 100


def test_deltas_not_float_rounded():
    # 9 digits beyond what a float64 of epoch seconds holds (~0.2 µs)
    a = iso_to_ns("2026-08-09T21:05:48.228568804Z")
    b = iso_to_ns("2026-08-09T21:05:48.228568805Z")
    assert b - a == 1
    base = datetime(2026, 8, 9, 21, 5, 48, tzinfo=UTC)
    assert a == (base - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000 + (
        228568804
    )


def test_for_subscriptions_uses_subscriptions():
    from fairfeed.core.subscriptions import Subscription

    subs = tuple(
        Subscription("coinbase", "coinbase", name, "spot", 4, 8, iid, CLASS_SPOT)
        for name, iid in (("BTC-USD", 11), ("ETH-USD", 12))
    )
    for cls in (ExchangeFeedParser, AdvancedTradeParser):
        p = cls.for_subscriptions(subs)
        assert p.symbols == {"BTC-USD": 11, "ETH-USD": 12}
        assert (p.provider, p.venue, p.data_class) == (4, 8, CLASS_SPOT)
    p = ExchangeFeedParser.for_subscriptions(subs, trade_sequence=True)
    assert p.trade_sequence
