"""A local Coinbase server on loopback: the Exchange feed (ws-feed) or Advanced Trade market data.

``CoinbaseServer(name, cfg, feed="exchange" | "advanced", host=..., port=...)`` speaks one feed's
public market-data protocol over the shared local-server base
(:class:`~fairfeed.local.wsserver.LocalWsServer`): pacing, statistics and the fault
set are the base's, the messages are Coinbase's, shaped like the real captures
(``tests/data/captures``):

* **Numbers as strings**, prices with the instrument's decimals, sizes without trailing zeros;
  ids (``sequence``, ``trade_id``) as JSON integers on the Exchange feed, ``trade_id`` as a
  string on Advanced Trade (as on the wire).
* **Timestamps**: Exchange ``time`` with 6 fractional digits; Advanced Trade message
  ``timestamp`` as Go's RFC 3339 nano (trailing zeros dropped), trade ``time`` in microseconds
  (trailing zeros dropped), heartbeat ``current_time`` as Go's ``time.Time`` text.
* **Sides**: ``side`` is the *maker's* on both feeds (a taker buy prints ``"sell"`` /
  ``"SELL"``); the Exchange ``ticker`` ``side`` is the taker's, as on the wire.
* **Exchange feed**: ``{"type":"subscribe","product_ids":[...],"channels":[...]}`` (channel
  names or ``{"name", "product_ids"}`` objects) → one ``subscriptions`` answer listing every
  channel of the connection; then per subscribed product: ``last_match`` and the last
  ``ticker`` (if it traded before), ``match`` per trade (``sequence`` and ``trade_id`` per
  product: the market's), a ``ticker`` after every match (the channel's documented behaviour:
  quote events of the market are order-book changes, which ``matches``/``ticker`` do not carry),
  and with the ``heartbeat`` channel one ``heartbeat`` per product per ``heartbeat_interval``
  (``sequence``, ``last_trade_id``). Errors: ``{"type":"error","message","reason"}``.
* **Advanced Trade**: one ``{"type":"subscribe","product_ids":[...],"channel":...}`` per
  channel → a ``subscriptions`` message listing everything subscribed so far; ``market_trades``
  (a ``snapshot`` of up to 50 recent trades per product on subscribe, newest first; then
  ``update`` messages, one per run of consecutive trades of one product, newest first),
  ``ticker`` (a ``snapshot`` on subscribe, an ``update`` per quote event), ``heartbeats`` (one per
  ``heartbeat_interval`` with a rising ``heartbeat_counter``). ``sequence_num`` numbers every
  message of the connection, assigned when the frame is sent. Errors:
  ``{"type":"error","message":...}``. A -USDC product the market lacks is served as the
  matching -USD product, named so in every message, as Coinbase does.

Faults (:class:`~fairfeed.local.faults.Fault`): DISCONNECT, STALL, HEARTBEATS_ONLY,
EXCHANGE_DELAY, PRICE_OFFSET and MALFORMED as in the base. SEQUENCE_GAP: Exchange — the next
event of each streamed product skips ``amount`` sequence numbers and trade ids (the market's
skip); Advanced Trade — every connection's ``sequence_num`` skips ``amount`` numbers (as if
``amount`` messages were lost; ``sequence_num`` is the only message counter on that feed).
REJECT_SUBSCRIBE: subscribes get an ``error`` answer naming the rate limit. RECONNECT_NOTICE:
**Coinbase has no reconnect notice** on either feed (the server just closes), so this fault
sends nothing (``inject`` returns 0).

``keep_log=True`` keeps every text frame sent, as ``(connection index, text)`` in
``server.sent_log``, so a test can derive the records it expects independently.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

import numpy as np

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault
from fairfeed.local.market import EventBatch
from fairfeed.local.wsserver import Conn, LocalWsServer
from fairfeed.providers.coinbase.symbols import advanced_data_product

FEEDS = ("exchange", "advanced")
EXCHANGE_CHANNELS = frozenset(("matches", "ticker", "heartbeat"))
ADVANCED_CHANNELS = frozenset(("market_trades", "ticker", "heartbeats"))
SEQ_MARK = "#SEQ#"  # Advanced Trade: replaced by the connection's sequence_num at send time
RECENT_TRADES = 50  # Advanced Trade market_trades snapshot depth per product
RATE_LIMIT_MESSAGE = "rate limit exceeded"

_seconds_cache: dict[int, str] = {}


def _seconds_text(sec: int) -> str:
    s = _seconds_cache.get(sec)
    if s is None:
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        s = _seconds_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return s


def iso_micro(ns: int) -> str:
    """Exchange feed time: 6 fractional digits, always (``2021-04-17T16:43:37.075687Z``)."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    return f"{_seconds_text(sec)}.{rem // 1000:06d}Z"


def iso_trimmed(ns: int, digits: int) -> str:
    """RFC 3339 with ``digits`` fractional digits, trailing zeros dropped (Go's formatting)."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    frac = f"{rem // 10 ** (9 - digits):0{digits}d}".rstrip("0")
    return f"{_seconds_text(sec)}.{frac}Z" if frac else f"{_seconds_text(sec)}Z"


def go_time(ns: int, uptime_ns: int) -> str:
    """Go's ``time.Time.String()`` in UTC with its monotonic reading (heartbeat current_time)."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    day, clock = _seconds_text(sec).split("T")
    return f"{day} {clock}.{rem:09d} +0000 UTC m=+{uptime_ns / 1e9:.9f}"


def _num(x: float, decimals: int = 8) -> str:
    """A Coinbase number string: fixed decimals, trailing zeros dropped (``"0.04"``, ``"985"``)."""
    s = f"{x:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


class CoinbaseServer(LocalWsServer):
    """A local Coinbase Exchange-feed (``feed="exchange"``) or Advanced Trade server."""

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        feed: str = "exchange",
        keep_log: bool = False,
        **base: Any,  # the shared server's (host, port, ...)
    ) -> None:
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, not {feed!r}")
        super().__init__(name, cfg, **base)
        self.feed = feed
        self.heartbeat_interval = cfg.heartbeat_interval
        self.sent_log: list[tuple[int, str]] | None = [] if keep_log else None
        self.subscribes = 0  # subscribe requests answered (accepted or refused)
        self._started = time.monotonic_ns()
        self._order = 0  # fake order ids
        self._hb_counter = 0  # Advanced Trade heartbeat_counter (server-wide, rising)
        n = len(self.market.symbols)
        self._last_match: list[str | None] = [None] * n  # Exchange: last match, as last_match
        self._last_ticker: list[str | None] = [None] * n  # Exchange: last ticker
        self._recent: list[deque] = [deque(maxlen=RECENT_TRADES) for _ in range(n)]  # AT trades
        self._quote: list[str | None] = [None] * n  # AT: last ticker object per product

    # -- sending -------------------------------------------------------------------------------
    async def on_connect(self, conn: Conn) -> None:
        conn.state.update(channels={}, seq=0, skip=0)
        raw_send = conn.send

        async def send(text: str | bytes) -> None:
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            if self.feed == "advanced" and SEQ_MARK in text:
                st = conn.state
                st["seq"] += st["skip"]
                st["skip"] = 0
                text = text.replace(SEQ_MARK, str(st["seq"]), 1)
                st["seq"] += 1
            await raw_send(text)
            if self.sent_log is not None:
                self.sent_log.append((conn.index, text))

        conn.send = send  # type: ignore[method-assign]

    def _at(self, channel: str, events: str, ts_ns: int | None = None) -> str:
        ts = iso_trimmed(time.time_ns() if ts_ns is None else ts_ns, 9)
        return (
            f'{{"channel":"{channel}","client_id":"","timestamp":"{ts}",'
            f'"sequence_num":{SEQ_MARK},"events":[{events}]}}'
        )

    # -- requests ------------------------------------------------------------------------------
    async def on_message(self, conn: Conn, text: str) -> None:
        try:
            req = json.loads(text)
            kind = req["type"]
            products = list(req.get("product_ids") or [])
        except (ValueError, KeyError, TypeError, AttributeError):
            await self._error(conn, "Malformed JSON", "expected a subscribe or unsubscribe")
            return
        if kind not in ("subscribe", "unsubscribe"):
            await self._error(conn, f"Unknown message type {kind!r}", "")
            return
        if self.feed == "exchange":
            await self._exchange_request(conn, kind, products, req.get("channels"))
        else:
            await self._advanced_request(conn, kind, products, req.get("channel"))

    async def _error(self, conn: Conn, message: str, reason: str) -> None:
        if self.feed == "exchange":
            await conn.send(json.dumps({"type": "error", "message": message, "reason": reason}))
        else:
            await conn.send(json.dumps({"type": "error", "message": f"{message}: {reason}"}))

    async def _refused(self, conn: Conn) -> bool:
        self.subscribes += 1
        if self.rejecting():
            await self._error(conn, RATE_LIMIT_MESSAGE, "too many requests, at most 8 per second")
            return True
        return False

    def _update_streams(self, conn: Conn) -> None:
        data = ("matches", "ticker") if self.feed == "exchange" else ("market_trades", "ticker")
        chans = conn.state["channels"]
        streamed = set().union(*(chans.get(c, set()) for c in data))
        conn.symbols = [i for i in conn.symbols if i in streamed]
        conn.subscribe(sorted(streamed - set(conn.symbols)))

    async def _exchange_request(self, conn: Conn, kind, products, channels) -> None:
        if not isinstance(channels, list) or not channels:
            await self._error(conn, "Failed to subscribe", "channels must be a non-empty list")
            return
        wanted: dict[str, list[str]] = {}
        for ch in channels:
            if isinstance(ch, str):
                wanted[ch] = products
            elif isinstance(ch, dict) and isinstance(ch.get("name"), str):
                wanted[ch["name"]] = list(ch.get("product_ids") or products)
            else:
                await self._error(conn, "Failed to subscribe", f"bad channel {ch!r}")
                return
        bad = [c for c in wanted if c not in EXCHANGE_CHANNELS]
        if bad:
            await self._error(conn, "Failed to subscribe", f"{bad[0]} is not a valid channel")
            return
        if kind == "subscribe" and await self._refused(conn):
            return
        for prods in wanted.values():
            _, unknown = self.indexes(prods)
            if unknown:
                reason = f"{unknown[0]} is not a valid product"
                await self._error(conn, "Failed to subscribe", reason)
                return
        chans = conn.state["channels"]
        fresh: dict[str, list[int]] = {}
        for ch, prods in wanted.items():
            known, _ = self.indexes(prods)
            have = chans.setdefault(ch, set())
            if kind == "subscribe":
                fresh[ch] = [i for i in known if i not in have]
                have.update(known)
            else:
                have.difference_update(known)
        names = self.market.symbols
        answer = {
            "type": "subscriptions",
            "channels": [
                {"name": ch, "product_ids": [names[i] for i in sorted(chans[ch])]}
                for ch in chans
                if chans[ch]
            ],
        }
        await conn.send(json.dumps(answer, separators=(",", ":")))
        # What the real feed sends on subscribe: the last trade and the last ticker.
        for i in fresh.get("matches", []):
            if self._last_match[i] is not None:
                await conn.send(self._last_match[i])
        for i in fresh.get("ticker", []):
            if self._last_ticker[i] is not None:
                await conn.send(self._last_ticker[i])
        self._update_streams(conn)

    async def _advanced_request(self, conn: Conn, kind, products, channel) -> None:
        if channel not in ADVANCED_CHANNELS:
            await self._error(conn, "Failure to subscribe", f"unknown channel {channel!r}")
            return
        if kind == "subscribe" and await self._refused(conn):
            return
        known, unknown = self.indexes([self._data_product(p) for p in products])
        if unknown:
            await self._error(conn, "Failure to subscribe", f"unknown product {unknown[0]}")
            return
        chans = conn.state["channels"]
        have = chans.setdefault(channel, set())
        fresh = [i for i in known if i not in have]
        if kind == "subscribe":
            have.update(known if channel != "heartbeats" else (-1,))
        else:
            have.difference_update(known if channel != "heartbeats" else (-1,))
        names = self.market.symbols
        subs = {
            ch: ["heartbeats"] if ch == "heartbeats" else [names[i] for i in sorted(v)]
            for ch, v in chans.items()
            if v
        }
        subs_text = json.dumps(subs, separators=(",", ":"))
        await conn.send(self._at("subscriptions", f'{{"subscriptions":{subs_text}}}'))
        if kind == "subscribe" and channel == "market_trades" and fresh:
            trades = [t for i in fresh for t in reversed(self._recent[i])]
            await conn.send(
                self._at("market_trades", f'{{"type":"snapshot","trades":[{",".join(trades)}]}}')
            )
        if kind == "subscribe" and channel == "ticker" and fresh:
            for i in fresh:
                if self._quote[i] is not None:
                    ev = f'{{"type":"snapshot","tickers":[{self._quote[i]}]}}'
                    await conn.send(self._at("ticker", ev))
        self._update_streams(conn)

    def _data_product(self, product: str) -> str:
        """Advanced Trade: the product whose data a subscription to ``product`` gets (a -USDC
        product not in the market is served as its -USD alias, named so)."""
        if product in self.market.index:
            return product
        try:
            return advanced_data_product(product)
        except ValueError:
            return product

    # -- streams -------------------------------------------------------------------------------
    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        if self.feed == "exchange":
            return self._exchange_events(conn, ev)
        return self._advanced_events(conn, ev)

    def _exchange_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        chans = conn.state["channels"]
        matches = chans.get("matches", ())
        tickers = chans.get("ticker", ())
        names = self.market.symbols
        dec = self.market.decimals
        out: list[str] = []
        ts_text = ""
        last_ts = -1
        for i in np.flatnonzero(~ev.is_quote):
            s = int(ev.symbol[i])
            d = int(dec[s])
            ts = int(ev.ts_exchange[i])
            if ts != last_ts:
                ts_text, last_ts = iso_micro(ts), ts
            taker_buy = bool(ev.taker_buy[i])
            price = f"{ev.price[i]:.{d}f}"
            size = _num(float(ev.size[i]))
            seq, tid = int(ev.seq[i]), int(ev.trade_id[i])
            self._order += 2
            o = self._order
            maker, taker = (
                f"{o:08x}-0000-4000-8000-{o:012x}",
                f"{o + 1:08x}-0000-4000-8000-{o:012x}",
            )
            body = (
                f'"trade_id":{tid},"maker_order_id":"{maker}","taker_order_id":"{taker}",'
                f'"side":"{"sell" if taker_buy else "buy"}","size":"{size}","price":"{price}",'
                f'"product_id":"{names[s]}","sequence":{seq},"time":"{ts_text}"}}'
            )
            self._last_match[s] = '{"type":"last_match",' + body
            ticker = (
                f'{{"type":"ticker","sequence":{seq},"product_id":"{names[s]}",'
                f'"price":"{price}","open_24h":"{price}","volume_24h":"0","low_24h":"{price}",'
                f'"high_24h":"{price}","volume_30d":"0",'
                f'"best_bid":"{ev.bid[i]:.{d}f}","best_bid_size":"{_num(float(ev.bid_size[i]))}",'
                f'"best_ask":"{ev.ask[i]:.{d}f}","best_ask_size":"{_num(float(ev.ask_size[i]))}",'
                f'"side":"{"buy" if taker_buy else "sell"}","time":"{ts_text}",'
                f'"trade_id":{tid},"last_size":"{size}"}}'
            )
            self._last_ticker[s] = ticker
            if s in matches:
                out.append('{"type":"match",' + body)
            if s in tickers:
                out.append(ticker)
        return out

    def _advanced_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        chans = conn.state["channels"]
        trades_on = chans.get("market_trades", ())
        ticker_on = chans.get("ticker", ())
        names = self.market.symbols
        dec = self.market.decimals
        out: list[str] = []
        run: list[str] = []  # consecutive trades, oldest first
        ts_prov = int(ev.ts_provider[0]) if len(ev) else 0
        run_product = -1

        def flush_run() -> None:
            if run:
                trades = ",".join(reversed(run))  # the wire lists the newest first
                out.append(self._at("market_trades", f'{{"type":"update","trades":[{trades}]}}',
                                    ts_prov))  # fmt: skip
                run.clear()

        for i in range(len(ev)):
            s = int(ev.symbol[i])
            d = int(dec[s])
            if ev.is_quote[i]:
                tk = (
                    f'{{"type":"ticker","product_id":"{names[s]}","price":"{ev.bid[i]:.{d}f}",'
                    f'"volume_24_h":"0","low_24_h":"0","high_24_h":"0","low_52_w":"0",'
                    f'"high_52_w":"0","price_percent_chg_24_h":"0",'
                    f'"best_bid":"{ev.bid[i]:.{d}f}","best_ask":"{ev.ask[i]:.{d}f}",'
                    f'"best_bid_quantity":"{_num(float(ev.bid_size[i]))}",'
                    f'"best_ask_quantity":"{_num(float(ev.ask_size[i]))}"}}'
                )
                self._quote[s] = tk
                if s in ticker_on:
                    flush_run()
                    out.append(self._at("ticker", f'{{"type":"update","tickers":[{tk}]}}',
                                        ts_prov))  # fmt: skip
                continue
            tr = (
                f'{{"product_id":"{names[s]}","trade_id":"{int(ev.trade_id[i])}",'
                f'"price":"{ev.price[i]:.{d}f}","size":"{_num(float(ev.size[i]))}",'
                f'"time":"{iso_trimmed(int(ev.ts_exchange[i]), 6)}",'
                f'"side":"{"SELL" if ev.taker_buy[i] else "BUY"}"}}'
            )
            self._recent[s].append(tr)
            if s in trades_on:
                if s != run_product:
                    flush_run()
                    run_product = s
                run.append(tr)
        flush_run()
        return out

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        chans = conn.state.get("channels", {})
        now = time.time_ns()
        if self.feed == "exchange":
            names = self.market.symbols
            t = iso_micro(now)
            m = self.market
            return [
                f'{{"type":"heartbeat","last_trade_id":{int(m.trade_id[s])},'
                f'"product_id":"{names[s]}","sequence":{int(m.seq[s])},"time":"{t}"}}'
                for s in sorted(chans.get("heartbeat", ()))
            ]
        if not chans.get("heartbeats"):
            return []
        self._hb_counter += 1
        ct = go_time(now, time.monotonic_ns() - self._started)
        ev = f'{{"current_time":"{ct}","heartbeat_counter":{self._hb_counter}}}'
        return [self._at("heartbeats", ev, now)]

    def malformed_message(self) -> str:
        if self.feed == "exchange":
            return '{"type":"match","trade_id":1,"side":"sell","size":"1","price":"not-a-number"'
        return '{"channel":"market_trades","timestamp":"x","sequence_num":'

    async def inject(self, fault: Fault, amount: float = 0.0) -> int:
        if fault is Fault.SEQUENCE_GAP and self.feed == "advanced":
            conns = list(self._conns.values())
            for c in conns:
                c.state["skip"] = c.state.get("skip", 0) + int(amount or 5)
            return len(conns)
        return await super().inject(fault, amount)
