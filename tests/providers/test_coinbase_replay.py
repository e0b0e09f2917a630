"""Real Coinbase captures → replay server → real WebSocket client → Coinbase parsers.

The expected trades and quotes are counted here, independently of the parsers: plain ``json``,
simple loops, and numpy's own ISO-8601 parser (``datetime64[ns]``) for the timestamps. The
records must equal them field by field (everything but the local receive time, which is ours).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

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
    SIDE_UNKNOWN,
    empty_records,
)
from fairfeed.local.capture import received
from fairfeed.local.replay import ReplayServer
from fairfeed.providers.coinbase.parse import (
    CONTROL,
    PARSE_ERROR,
    AdvancedTradeParser,
    ExchangeFeedParser,
)

CAPTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"
EXCHANGE = CAPTURES / "COINBASE.ws.28.0"
ADVANCED = CAPTURES / "COINBASE.jsonl.zst"
PROV, VENUE = 6, 9


FIELDS = ("ts_exchange", "ts_provider", "price", "size", "sequence", "instrument", "provider",
          "venue", "kind", "data_class", "side", "flags", "reserved")  # fmt: skip


def ns(text: str) -> int:
    """ISO-8601 UTC with up to 9 fractional digits → ns, by numpy (the independent oracle)."""
    assert text.endswith("Z")
    return int(np.datetime64(text[:-1], "ns").astype(np.int64))


def rec(ts_ex, ts_prov, price, size, seq, inst, kind, side, reserved=0):
    return (ts_ex, ts_prov, price, size, seq, inst, PROV, VENUE, kind, CLASS_SPOT, side, 0,
            reserved)  # fmt: skip


# --- independent expectations ----------------------------------------------------------------


def expect_exchange(frames, ids):
    """Exchange feed: match side is the maker's → taker is the other; trade_id in reserved."""
    out = []
    controls = 0
    for _, text in frames:
        m = json.loads(text)
        t = m["type"]
        if t == "match":  # last_match is history: never published
            taker = SIDE_BUY if m["side"] == "sell" else SIDE_SELL
            out.append(rec(ns(m["time"]), 0, float(m["price"]), float(m["size"]), m["sequence"],
                           ids[m["product_id"]], KIND_TRADE, taker, m["trade_id"]))  # fmt: skip
        elif t == "ticker":
            common = (ns(m["time"]), 0)
            inst, seq, tid = ids[m["product_id"]], m["sequence"], m["trade_id"]
            out.append(rec(*common, float(m["best_bid"]), float(m.get("best_bid_size", 0)), seq,
                           inst, KIND_BID, SIDE_UNKNOWN, tid))  # fmt: skip
            out.append(rec(*common, float(m["best_ask"]), float(m.get("best_ask_size", 0)), seq,
                           inst, KIND_ASK, SIDE_UNKNOWN, tid))  # fmt: skip
        elif t in ("subscriptions", "error"):
            controls += 1
    return out, controls


def expect_advanced(frames, ids, snapshot_trades):
    out = []
    controls = 0
    for _, text in frames:
        m = json.loads(text)
        ch = m["channel"]
        tp = ns(m["timestamp"])
        for ev in m["events"]:
            if ch == "market_trades" and (snapshot_trades or ev["type"] == "update"):
                # the wire lists the newest trade first; records go oldest first
                for tr in sorted(ev["trades"], key=lambda x: int(x["trade_id"])):
                    taker = SIDE_BUY if tr["side"] == "SELL" else SIDE_SELL  # side = maker's
                    out.append(rec(ns(tr["time"]), tp, float(tr["price"]), float(tr["size"]),
                                   int(tr["trade_id"]), ids[tr["product_id"]], KIND_TRADE,
                                   taker))  # fmt: skip
            elif ch == "ticker":
                for tk in ev["tickers"]:
                    inst, seq = ids[tk["product_id"]], m["sequence_num"]
                    out.append(rec(0, tp, float(tk["best_bid"]), float(tk["best_bid_quantity"]),
                                   seq, inst, KIND_BID, SIDE_UNKNOWN))  # fmt: skip
                    out.append(rec(0, tp, float(tk["best_ask"]), float(tk["best_ask_quantity"]),
                                   seq, inst, KIND_ASK, SIDE_UNKNOWN))  # fmt: skip
            elif ch == "heartbeats":
                ct = ev["current_time"]  # "2026-08-09 21:05:48.854840045 +0000 UTC m=+..."
                hb_ns = ns(ct.split(" +0000")[0].replace(" ", "T") + "Z")
                out.append(rec(hb_ns, tp, 0.0, 0.0, ev["heartbeat_counter"], NO_INSTRUMENT,
                               KIND_HEARTBEAT, SIDE_UNKNOWN))  # fmt: skip
        if ch == "subscriptions":
            controls += 1
    return out, controls


# --- replay through a real socket ------------------------------------------------------------


async def replay_into(path: Path, parsers) -> list[tuple[int, list]]:
    """Replay ``path`` as fast as possible; feed every received frame to each parser.

    Returns per parser (controls seen, records as tuples without ts_receive).
    """
    results = [(0, []) for _ in parsers]
    out = empty_records(4096)
    async with ReplayServer(path, speed=0, keep_open=False) as srv:
        async with connect(srv.url, max_size=None, compression=None) as ws:
            await ws.send(json.dumps({"type": "subscribe"}))  # ignored by the replay
            last_rx = 0
            async for frame in ws:
                rx = time.time_ns()
                assert rx >= last_rx
                last_rx = rx
                for i, p in enumerate(parsers):
                    n = p.parse(frame, out, 0, rx)
                    assert n != PARSE_ERROR, p.error
                    if n == CONTROL:
                        results[i] = (results[i][0] + 1, results[i][1])
                        continue
                    assert n >= 0
                    got = out[:n]
                    assert (got["ts_receive"] == rx).all()
                    results[i][1].extend(tuple(r[f].item() for f in FIELDS) for r in got)
        assert srv.sent == len(srv.frames)
    return results


def test_exchange_feed_capture_exact():
    _, frames = received(EXCHANGE)
    products = sorted({json.loads(t).get("product_id") for _, t in frames} - {None})
    ids = {p: 100 + i for i, p in enumerate(products)}
    expected, controls = expect_exchange(frames, ids)
    # The capture, counted: 97 match (and 10 last_match: history), 107 tickers, 3 answers.
    kinds = [r[8] for r in expected]
    assert (kinds.count(KIND_TRADE), kinds.count(KIND_BID), kinds.count(KIND_ASK)) == (
        97,
        107,
        107,
    )
    assert controls == 3

    parser = ExchangeFeedParser(ids, PROV, VENUE, CLASS_SPOT)
    [(got_controls, got)] = asyncio.run(replay_into(EXCHANGE, [parser]))
    assert got_controls == controls
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == e


def test_advanced_trade_capture_exact():
    _, frames = received(ADVANCED)
    ids = {"BTC-USD": 1, "ETH-USD": 2}
    live, controls = expect_advanced(frames, ids, snapshot_trades=False)
    with_snap, _ = expect_advanced(frames, ids, snapshot_trades=True)
    kinds = [r[8] for r in live]
    # The capture, counted: 79 live trades (+200 in the two subscribe snapshots), 160 tickers,
    # 25 heartbeats, 5 subscriptions answers.
    assert kinds.count(KIND_TRADE) == 79
    assert [r[8] for r in with_snap].count(KIND_TRADE) == 279
    assert (kinds.count(KIND_BID), kinds.count(KIND_ASK), kinds.count(KIND_HEARTBEAT)) == (
        160, 160, 25)  # fmt: skip
    assert controls == 5

    p_live = AdvancedTradeParser(ids, PROV, VENUE, CLASS_SPOT)
    p_snap = AdvancedTradeParser(ids, PROV, VENUE, CLASS_SPOT, snapshot_trades=True)
    (c1, got_live), (c2, got_snap) = asyncio.run(replay_into(ADVANCED, [p_live, p_snap]))
    assert c1 == c2 == controls
    assert not [r for r in got_live if r[8] == KIND_GAP]  # sequence_num has no jump
    for got, exp in ((got_live, live), (got_snap, with_snap)):
        assert len(got) == len(exp)
        for g, e in zip(got, exp, strict=True):
            assert g == e
