"""A local Kraken spot v2 WebSocket server, for tests and the daemon.

Faithful to what the adapter depends on (docs/providers/kraken.md):

* a ``status`` message right after connecting;
* ``subscribe`` / ``unsubscribe`` for ``trade`` (with ``snapshot``, default true: up to 50
  recent trades) and ``ticker`` (``snapshot`` default true: the current top of book;
  ``event_trigger``), answered once per symbol; an unknown pair gets ``"Currency pair not
  supported"`` naming the symbol; more than ``max_streams`` (channel × symbol) on one
  connection gets ``"EGeneral:Too many subscriptions"`` for the whole request;
* ``{"channel":"heartbeat"}`` every ``heartbeat_interval`` once something is subscribed;
* ``{"method":"ping","req_id":n}`` → ``{"method":"pong","req_id":n,…}``;
* trades of one symbol generated together share one message, as Kraken groups the fills of
  one taker order.

Faults (:mod:`fairfeed.local.faults`): DISCONNECT, STALL (nothing sent, nothing
read: not even a WebSocket pong), HEARTBEATS_ONLY, RATE_SCALE, SEQUENCE_GAP (trade ids skip),
EXCHANGE_DELAY, PRICE_OFFSET, MALFORMED, REJECT_SUBSCRIBE (``"EGeneral:Too many requests"``, or
with ``msg_rate_error`` the request dropped with ``{"Error":"Exceeded msg rate"}``, as Kraken
answers requests sent too fast).
Kraken's v2 API has no reconnect notice: RECONNECT_NOTICE does nothing.
"""

from __future__ import annotations

import collections
import json
import time
from datetime import UTC, datetime
from typing import Any

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.market import HALF_SPREAD, EventBatch
from fairfeed.local.wsserver import Conn, LocalWsServer
from fairfeed.providers.kraken.symbols import from_symbol, to_symbol
from fairfeed.providers.kraken.wire import RATE_LIMIT_ERROR, encode

SNAPSHOT_TRADES = 50


def rfc3339(ns: int) -> str:
    """ns since epoch → ``2023-09-25T07:48:36.925533Z`` (microseconds, truncated)."""
    sec, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"


class KrakenServer(LocalWsServer):
    """Kraken spot v2 ``trade`` / ``ticker`` channels over the shared random-walk market."""

    keepalive = None  # the protocol has heartbeats; WebSocket pings are answered

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        heartbeat_interval: float = 1.0,
        max_streams: int = 0,
        msg_rate_error: bool = False,
        keep_log: bool = False,
        **base: Any,  # the shared server's (host, port, ...)
    ) -> None:
        super().__init__(name, cfg, **base)
        self.heartbeat_interval = heartbeat_interval
        self.max_streams = max_streams  # channel x symbol per connection, 0 = no limit
        self.msg_rate_error = msg_rate_error
        self.keep_log = keep_log
        self.sent: list[str] = []  # every market message sent (keep_log), in order
        self.requests: list[tuple[float, int, str, str, int]] = []  # t, conn, method, channel, n
        self.wire = [to_symbol(s) for s in self.market.symbols]
        self.pings = 0
        self.limit_errors = 0
        self._recent = [collections.deque(maxlen=SNAPSHOT_TRADES) for _ in self.wire]
        self._last_price = [0.0] * len(self.wire)

    # -- connection ----------------------------------------------------------------------------
    async def on_connect(self, conn: Conn) -> None:
        conn.state["channels"] = {"trade": set(), "ticker": set()}
        if self.faults.stall:
            return
        await conn.send(
            encode({
                "channel": "status", "type": "update",
                "data": [{"version": "2.0.10", "system": "online", "api_version": "v2",
                          "connection_id": 1000 + conn.index}],
            })
        )  # fmt: skip

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        return ['{"channel":"heartbeat"}'] if conn.symbols else []

    def _answer(self, req: dict, ok: bool, **fields: object) -> str:
        now = rfc3339(time.time_ns())
        msg = {"method": req.get("method"), **fields, "success": ok,
               "time_in": now, "time_out": now}  # fmt: skip
        if "req_id" in req:
            msg["req_id"] = req["req_id"]
        return encode(msg).decode()

    async def on_message(self, conn: Conn, text: str) -> None:
        try:
            req = json.loads(text)
            method = req["method"]
        except (ValueError, KeyError, TypeError):
            await conn.send(encode({"error": "EGeneral:Invalid arguments", "success": False}))
            return
        params = req.get("params") or {}
        channel = params.get("channel", "")
        symbols = params.get("symbol") or []
        self.requests.append((time.monotonic(), conn.index, method, channel, len(symbols)))
        if method == "ping":
            self.pings += 1
            now = rfc3339(time.time_ns())
            pong = {"method": "pong", "req_id": req.get("req_id"), "time_in": now, "time_out": now}
            await conn.send(encode(pong))
            return
        if method not in ("subscribe", "unsubscribe"):
            await conn.send(self._answer(req, False, error=f"Method not found: {method}"))
            return
        if method == "subscribe" and self.rejecting():
            if self.msg_rate_error:
                await conn.send(encode({"Error": "Exceeded msg rate"}))
            else:
                await conn.send(self._answer(req, False, error=RATE_LIMIT_ERROR))
            return
        chans: dict[str, set[int]] = conn.state["channels"]
        if channel not in chans or not isinstance(symbols, list):
            await conn.send(self._answer(req, False, error=f"Channel {channel!r} not supported"))
            return
        index = self.market.index
        known = []
        for s in symbols:
            try:
                i = index.get(from_symbol(s))
            except (ValueError, TypeError):
                i = None
            if i is None:
                err = f"Currency pair not supported {s}"
                await conn.send(self._answer(req, False, error=err, symbol=s))
            else:
                known.append((s, i))
        if method == "subscribe":
            total = sum(len(v) for v in chans.values()) + len(
                {i for _, i in known} - chans[channel]
            )
            if self.max_streams and total > self.max_streams:
                self.limit_errors += 1
                await conn.send(self._answer(req, False, error="EGeneral:Too many subscriptions"))
                return
        snapshot = params.get("snapshot", True)
        for s, i in known:
            result = {"channel": channel, "symbol": s}
            if method == "subscribe":
                chans[channel].add(i)
                result["snapshot"] = snapshot
            else:
                chans[channel].discard(i)
            await conn.send(self._answer(req, True, result=result))
            if method == "subscribe" and snapshot:
                await self._snapshot(conn, channel, i)
        conn.symbols = sorted(chans["trade"] | chans["ticker"])
        conn.wake.set()

    async def _snapshot(self, conn: Conn, channel: str, i: int) -> None:
        if channel == "trade":
            items = list(self._recent[i])
            if not items:
                return
            msg = f'{{"channel":"trade","type":"snapshot","data":[{",".join(items)}]}}'
        else:
            mid = float(self.market.mid[i])
            dec = int(self.market.decimals[i])
            bid = round(mid * (1 - HALF_SPREAD), dec)
            ask = max(round(mid * (1 + HALF_SPREAD), dec), bid + 10.0**-dec)
            item = self._ticker(i, bid, 1.0, round(ask, dec), 1.0)
            msg = f'{{"channel":"ticker","type":"snapshot","data":[{item}]}}'
        if self.keep_log:
            self.sent.append(msg)
        await conn.send(msg)

    def _ticker(self, i: int, bid: float, bq: float, ask: float, aq: float) -> str:
        last = self._last_price[i] or bid
        return (
            f'{{"symbol":"{self.wire[i]}","bid":{bid!r},"bid_qty":{bq!r},"ask":{ask!r},'
            f'"ask_qty":{aq!r},"last":{last!r},"volume":1234.5,"vwap":{last!r},'
            f'"low":{last!r},"high":{last!r},"change":0.0,"change_pct":0.0}}'
        )

    # -- market messages -----------------------------------------------------------------------
    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        chans: dict[str, set[int]] = conn.state["channels"]
        trades_on, tickers_on = chans["trade"], chans["ticker"]
        out: list[str] = []
        run: list[str] = []  # trades of one symbol in a row: one message
        run_sym = -1
        is_quote = ev.is_quote.tolist()
        sym = ev.symbol.tolist()
        tid = ev.trade_id.tolist()
        ts = ev.ts_exchange.tolist()
        price, size, buy = ev.price.tolist(), ev.size.tolist(), ev.taker_buy.tolist()
        bid, bsz = ev.bid.tolist(), ev.bid_size.tolist()
        ask, asz = ev.ask.tolist(), ev.ask_size.tolist()

        def end_run() -> None:
            if run:
                out.append(f'{{"channel":"trade","type":"update","data":[{",".join(run)}]}}')
                run.clear()

        for k in range(len(sym)):
            i = sym[k]
            if i != run_sym:
                end_run()
                run_sym = i
            if is_quote[k]:
                if i in tickers_on:
                    end_run()
                    item = self._ticker(i, bid[k], bsz[k], ask[k], asz[k])
                    out.append(f'{{"channel":"ticker","type":"update","data":[{item}]}}')
                continue
            side = "buy" if buy[k] else "sell"
            item = (
                f'{{"symbol":"{self.wire[i]}","side":"{side}","price":{price[k]!r},'
                f'"qty":{size[k]!r},"ord_type":"market","trade_id":{tid[k]},'
                f'"timestamp":"{rfc3339(ts[k])}"}}'
            )
            self._recent[i].append(item)
            self._last_price[i] = price[k]
            if i in trades_on:
                run.append(item)
        end_run()
        if self.keep_log:
            self.sent.extend(out)
        return out

    def malformed_message(self) -> str:
        return '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","price":"oops"'
