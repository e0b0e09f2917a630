"""The compute pipeline's derivatives path: its own topic, the metrics board, never a tick and
no input of the fair price unless ``[fair] mark_inputs`` makes a perpetual's marks one."""

from __future__ import annotations

import math
import os

import numpy as np
import orjson
import pytest

from fairfeed.core.config import loads
from fairfeed.core.records import (
    CLASS_PERPETUAL,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_HEARTBEAT,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    NO_INSTRUMENT,
    RECORD_DTYPE,
    SEQ_NONE,
    SIDE_SELL,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Stream, SubscriptionSet
from fairfeed.daemon.compute import Pipeline
from fairfeed.daemon.derivatives import derivatives_of
from fairfeed.hotpath.metrics import D_INDEX, D_MARK, D_NEXT_FUNDING, D_OPEN_INTEREST
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.counters import SlotCounters
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.kafka.collect import CollectSink
from fairfeed.kafka.encode import decode_derivatives, decode_ticks

T0 = 1_700_000_000 * 10**9
CFG = loads('[fair]\nmin_interval = 0.0\n[kafka]\nderivatives_topic = "d"\nticks_topic = "t"\n'
            'fair_topic = "f"\n')  # fmt: skip
INST = "BTC-USDT-PERP"


def _rec(kind: int, price: float, size: float = 0.0, **fields) -> np.ndarray:
    r = np.zeros(1, RECORD_DTYPE)
    r["kind"], r["price"], r["size"] = kind, price, size
    r["instrument"], r["provider"], r["venue"] = 0, 0, 0
    r["data_class"], r["sequence"], r["ts_receive"] = CLASS_PERPETUAL, SEQ_NONE, T0
    for name, value in fields.items():
        r[name] = value
    return r


@pytest.fixture
def pipe(tmp_path, request):
    cfg = getattr(request, "param", CFG)
    tag = f"fftest-{os.getpid()}-deriv"
    reg = Registry.build([(INST, CLASS_PERPETUAL)], [("binance", "binance")], 8, 4)
    control = ControlBlock.create(f"{tag}-c", 1, 8)
    board = MetricsBoard.create(f"{tag}-m", 8, 4)
    out = tmp_path / "out.jsonl"
    sink = CollectSink(out, frozenset({"t", "d", "f"}), SlotCounters(control, 0))
    live = SubscriptionSet([Stream("binance", "binance", INST, "perpetual")])
    p = Pipeline(cfg, reg, sink, control, SlotCounters(control, 0), metrics=board, live=live)
    yield p, board, out
    sink.close()
    for seg in (control, board):
        seg.close()
        seg.unlink()


def _messages(out) -> dict[str, list[dict]]:
    got: dict[str, list[dict]] = {}
    for line in out.read_bytes().splitlines():
        m = orjson.loads(line)
        got.setdefault(m["topic"], []).append(m)
    return got


def test_derivatives_reach_their_topic_and_board_and_never_the_ticks_or_the_fair_price(
    pipe,
) -> None:
    p, board, out = pipe
    batch = np.concatenate([
        _rec(KIND_TRADE, 100.0, 1.0, sequence=7),
        _rec(KIND_MARK, 200.0, ts_exchange=T0 - 5),
        _rec(KIND_INDEX, 190.0),
        _rec(KIND_FUNDING, 0.0001, math.nan, reserved=1_700_003_600),
        _rec(KIND_OPEN_INTEREST, 0.0, 1234.5),
        _rec(KIND_LIQUIDATION, 250.0, 0.5, side=SIDE_SELL),
        _rec(KIND_BID, 99.0, 2.0),
        _rec(KIND_ASK, 101.0, 3.0),
        _rec(KIND_MARK, 210.0),  # the later mark wins on the board
        _rec(KIND_LIQUIDATION, 240.0, 0.25, side=SIDE_SELL),
        _rec(KIND_HEARTBEAT, 0.0, instrument=NO_INSTRUMENT),
    ])  # fmt: skip
    p.process(batch)
    p.emit_fair(T0 + 10**9, final=True)
    p.sink.commit()
    got = _messages(out)

    (d,) = got["d"]
    assert d["key"] == INST
    msg = decode_derivatives(orjson.dumps(d["value"]))
    assert (msg["instrument"], msg["provider"], msg["data_class"]) == (INST, "binance", "perpetual")
    assert msg["count"] == 7
    assert msg["kind"].tolist() == [4, 5, 6, 7, 8, 4, 8]
    assert msg["price"][[0, 1, 2, 4, 5, 6]].tolist() == [200.0, 190.0, 0.0001, 250.0, 210.0, 240.0]
    assert math.isnan(msg["size"][2]) and msg["size"][[3, 4, 6]].tolist() == [1234.5, 0.5, 0.25]
    assert msg["next_funding_time"].tolist() == [0, 0, 1_700_003_600 * 10**9, 0, 0, 0, 0]
    assert msg["side"].tolist() == [0, 0, 0, 0, SIDE_SELL, 0, SIDE_SELL]
    assert msg["ts_exchange"][0] == T0 - 5 and (msg["ts_receive"] == T0).all()

    ticks = [decode_ticks(orjson.dumps(m["value"])) for m in got["t"]]
    assert [k for t in ticks for k in t["kind"].tolist()] == [KIND_TRADE, KIND_BID, KIND_ASK]
    (fair,) = got["f"]
    assert fair["value"]["price"] == 100.0  # the trade's, never a mark's (200, 210)

    assert board.deriv[D_MARK, 0, 0] == 210.0 and board.deriv[D_INDEX, 0, 0] == 190.0
    assert board.deriv[D_NEXT_FUNDING, 0, 0] == 1_700_003_600
    assert board.deriv[D_OPEN_INTEREST, 0, 0] == 1234.5
    assert board.liquidations[0, 0] == 2 and board.liquidated[0, 0] == 0.75
    assert board.price[0, 0] == 100.0  # the stream's market price: the quote mid, not a mark


def test_a_pass_of_market_data_only_publishes_no_derivatives(pipe) -> None:
    p, board, out = pipe
    p.process(np.concatenate([_rec(KIND_TRADE, 100.0, 1.0), _rec(KIND_BID, 99.0, 1.0)]))
    p.sink.commit()
    assert "d" not in _messages(out)
    assert np.isnan(board.deriv).all() and p.derivatives.published == 0


def test_derivatives_of_keeps_the_order_and_only_kinds_4_to_8() -> None:
    kinds = [KIND_TRADE, KIND_LIQUIDATION, KIND_HEARTBEAT, KIND_MARK, KIND_ASK, KIND_FUNDING]
    recs = np.concatenate([_rec(k, float(i + 1)) for i, k in enumerate(kinds)])
    got = derivatives_of(recs)
    assert got["kind"].tolist() == [KIND_LIQUIDATION, KIND_MARK, KIND_FUNDING]
    assert got["price"].tolist() == [2.0, 4.0, 6.0]


MARKS_CFG = loads('[fair]\nmin_interval = 0.0\nmark_inputs = true\n[kafka]\n'
                  'derivatives_topic = "d"\nticks_topic = "t"\nfair_topic = "f"\n')  # fmt: skip


@pytest.mark.parametrize("pipe", [MARKS_CFG], indirect=True)
def test_with_mark_inputs_a_perpetual_s_mark_is_a_fair_price_input(pipe) -> None:
    """The same records as above: the marks still reach their topic and never the ticks, and
    the fair price now takes the last mark next to the trade (the venue's median of both)."""
    p, _board, out = pipe
    batch = np.concatenate([
        _rec(KIND_TRADE, 100.0, 1.0, sequence=7),
        _rec(KIND_MARK, 200.0),
        _rec(KIND_INDEX, 190.0),  # an index price is no input
        _rec(KIND_MARK, 210.0),
    ])  # fmt: skip
    p.process(batch)
    p.emit_fair(T0 + 10**9, final=True)
    p.sink.commit()
    got = _messages(out)
    (fair,) = got["f"]
    v = fair["value"]
    assert (v["price"], v["sources"], v["marks"], v["venues"]) == (155.0, 2, 1, 1)
    (d,) = got["d"]
    assert d["value"]["kind"] == [KIND_MARK, KIND_INDEX, KIND_MARK]
    ticks = [decode_ticks(orjson.dumps(m["value"])) for m in got["t"]]
    assert [k for t in ticks for k in t["kind"].tolist()] == [KIND_TRADE]
