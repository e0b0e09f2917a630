"""Replay provider: capture readers and the replay server's timing, over real loopback sockets."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from fairfeed.local.capture import read_capture, received
from fairfeed.local.replay import ReplayServer

CAPTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"
EXCHANGE = CAPTURES / "COINBASE.ws.28.0"
ADVANCED = CAPTURES / "COINBASE.jsonl.zst"


def test_text_capture_reader():
    kinds = collections.Counter(ev.kind for ev in read_capture(EXCHANGE))
    assert kinds == {"connect": 1, "send": 3, "recv": 9946}
    conn, frames = received(EXCHANGE)
    assert conn == "wss://ws-feed.pro.coinbase.com"
    assert frames[0][0] == 1618677817061845000  # "1618677817.061845", exactly
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(frames))
    types = collections.Counter(json.loads(t)["type"] for _, t in frames)
    assert types == {"l2update": 9719, "ticker": 107, "match": 97, "snapshot": 10,
                     "last_match": 10, "subscriptions": 3}  # fmt: skip


def test_zst_capture_reader():
    evs = list(read_capture(ADVANCED))
    kinds = collections.Counter(ev.kind for ev in evs)
    assert kinds == {"header": 1, "http": 1, "connect": 1, "send": 5, "recv": 1030}
    conn, frames = received(ADVANCED)
    assert conn == "COINBASE.ws.2"
    assert received(ADVANCED, "wss://advanced-trade-ws.coinbase.com")[1] == frames
    assert frames[0][0] == 1786309548629007800  # 1786309548.6290078
    channels = collections.Counter(json.loads(t)["channel"] for _, t in frames)
    assert channels == {"l2_data": 775, "ticker": 160, "market_trades": 59, "heartbeats": 25,
                        "candles": 6, "subscriptions": 5}  # fmt: skip
    seqs = [json.loads(t)["sequence_num"] for _, t in frames]
    assert seqs == list(range(len(seqs)))  # one connection, no gap


async def _arrivals(srv: ReplayServer, n: int) -> list[float]:
    """When each of ``n`` frames arrived; ``times[0]`` is when the client began to connect (the
    server's clock for the connection starts after it)."""
    times = [time.monotonic()]
    async with connect(srv.url, max_size=None) as ws:
        for _ in range(n):
            await ws.recv()
            times.append(time.monotonic())
    return times


def test_original_timing_scaled():
    _, frames = received(ADVANCED)
    frames = frames[:300]  # ~7.6 s of the capture
    speed = 10.0

    async def go():
        async with ReplayServer(frames, speed=speed) as srv:
            return await _arrivals(srv, len(frames))

    began, *got = asyncio.run(go())
    t0 = frames[0][0]
    dues = [(ts - t0) / 1e9 / speed for ts, _ in frames]
    # Never early: the schedule starts after the client began to connect, whatever the load.
    assert all(g - began >= due for g, due in zip(got, dues, strict=True))
    # Not the original pace (7.6 s) nor a drifting one: frames are due on an absolute schedule,
    # so even the last arrives well within a second of its time (a late frame delays no other).
    assert got[-1] - began <= dues[-1] + 1.0


def test_fast_keep_open_and_close():
    _, frames = received(ADVANCED)

    async def go():
        srv = ReplayServer(frames, speed=0, keep_open=True)
        async with srv, connect(srv.url, max_size=None) as ws:
            for _, text in frames:
                assert await ws.recv() == text
            with pytest.raises(TimeoutError):  # open and silent afterwards
                await asyncio.wait_for(ws.recv(), 0.3)
        async with ReplayServer(frames[:5], speed=0, keep_open=False) as srv:
            async with connect(srv.url) as ws:
                got = [await ws.recv() for _ in range(5)]
                with pytest.raises(ConnectionClosedOK):
                    await ws.recv()
            # every client gets the whole replay
            async with connect(srv.url) as ws:
                assert [await ws.recv() for _ in range(5)] == got
            assert srv.connections == 2 and srv.sent == 10

    asyncio.run(go())
