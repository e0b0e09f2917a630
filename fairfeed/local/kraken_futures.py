"""A local Kraken Futures v1 WebSocket server, for tests and the daemon.

Faithful to what the adapter depends on (docs/providers/kraken_futures.md):

* ``{"event":"info","version":1}`` right after connecting;
* ``subscribe`` / ``unsubscribe`` for ``trade`` (with a ``trade_snapshot`` of up to 100
  recent trades, newest first), ``ticker`` (the current ticker at once) and ``heartbeat``,
  answered once per product (``{"event":"subscribed","feed":…,"product_ids":[…]}``); a request
  naming an unknown product is refused as a whole with ``{"event":"error","message":"Invalid
  product id"}`` (Kraken's answer names no product); an unknown feed with ``"Invalid feed"``,
  a message that is not JSON with ``"Json Error"``;
* ``{"feed":"heartbeat","time":ms}`` every ``heartbeat_interval`` once the heartbeat feed is
  subscribed;
* the market's instruments are served as products by the adapter's own rule (``products``
  overrides it, ``contracts`` sets contract sizes: the provider's options), so sizes on the
  wire are contracts: base units / contract size (linear), base × price / contract size,
  rounded to whole contracts (inverse);
* a ticker per quote event (Kraken throttles its tickers to one a second; the local server
  sends one per top-of-book change), with the mark price at the mid, the index 1 bp under it,
  a fixed open interest and, for perpetuals, funding (next funding at the next full hour);
* every ``liquidation_every``-th trade of a product (by its ``seq``) is a liquidation fill,
  ``"type":"liquidation"`` (the others ``"fill"``), as Kraken marks them in the trade feed.

Faults (:mod:`fairfeed.local.faults`): DISCONNECT, STALL, HEARTBEATS_ONLY, RATE_SCALE,
SEQUENCE_GAP (trade ``seq`` skips), EXCHANGE_DELAY, PRICE_OFFSET, MALFORMED, REJECT_SUBSCRIBE
(``{"event":"error","message":"Too many requests"}``, the local server's stand-in: Kraken
documents no rate-limit answer for this API). Kraken Futures has no reconnect notice.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.market import HALF_SPREAD, EventBatch
from fairfeed.local.wsserver import Conn, LocalWsServer
from fairfeed.providers.kraken_futures.symbols import contract, data_class, product_id
from fairfeed.providers.kraken_futures.wire import encode

SNAPSHOT_TRADES = 100
OPEN_INTEREST = 1_000_000.0  # contracts
FUNDING_RATE = 1.25e-5  # relative, per period
FUNDING_PREDICTION = 1.5e-5
_HOUR_MS = 3_600_000


class KrakenFuturesServer(LocalWsServer):
    """Kraken Futures v1 ``trade`` / ``ticker`` / ``heartbeat`` feeds over the shared
    random-walk market."""

    keepalive = None  # clients ping; WebSocket pings are answered

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        products: Mapping[str, str] | None = None,
        contracts: Mapping[str, str | float] | None = None,
        heartbeat_interval: float = 1.0,
        liquidation_every: int = 50,
        keep_log: bool = False,
        **base: Any,  # the shared server's (host, port, ...)
    ) -> None:
        super().__init__(name, cfg, **base)
        self.heartbeat_interval = heartbeat_interval
        self.liquidation_every = liquidation_every  # 0: no liquidation fills
        self.keep_log = keep_log
        self.sent: list[str] = []  # every market message sent (keep_log), in order
        self.requests: list[tuple[float, int, str, str, int]] = []  # t, conn, event, feed, n
        self.wire = [product_id(s, products) for s in self.market.symbols]
        self.by_product = {p: i for i, p in enumerate(self.wire)}
        self.specs = [contract(p, contracts) for p in self.wire]  # (inverse, size)
        self.perpetual = [data_class(p) == "perpetual" for p in self.wire]
        self.errors = 0
        self._recent = [collections.deque(maxlen=SNAPSHOT_TRADES) for _ in self.wire]

    def _contracts(self, i: int, base: float, price: float) -> float:
        inverse, size = self.specs[i]
        if inverse:
            return float(max(1, round(base * price / size)))
        return base / size

    # -- connection ----------------------------------------------------------------------------
    async def on_connect(self, conn: Conn) -> None:
        conn.state["feeds"] = {"trade": set(), "ticker": set()}
        conn.state["heartbeat"] = False
        if not self.faults.stall:
            await conn.send('{"event":"info","version":1}')

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        if not conn.state.get("heartbeat"):
            return []
        return [f'{{"feed":"heartbeat","time":{time.time_ns() // 1_000_000}}}']

    async def _error(self, conn: Conn, message: str) -> None:
        self.errors += 1
        await conn.send(encode({"event": "error", "message": message}))

    async def on_message(self, conn: Conn, text: str) -> None:
        try:
            req = json.loads(text)
            event, feed = req["event"], req["feed"]
        except (ValueError, KeyError, TypeError):
            await self._error(conn, "Json Error")
            return
        products = req.get("product_ids") or []
        self.requests.append((time.monotonic(), conn.index, event, feed, len(products)))
        if event not in ("subscribe", "unsubscribe"):
            await self._error(conn, "Json Error")
            return
        if event == "subscribe" and self.rejecting():
            await self._error(conn, "Too many requests")
            return
        if feed == "heartbeat":
            conn.state["heartbeat"] = event == "subscribe"
            await conn.send(encode({"event": f"{event}d", "feed": feed}))
            return
        feeds: dict[str, set[int]] = conn.state["feeds"]
        if feed not in feeds or not isinstance(products, list):
            await self._error(conn, "Invalid feed")
            return
        known = [self.by_product.get(str(p).upper()) for p in products]
        if None in known:
            await self._error(conn, "Invalid product id")
            return
        for p, i in zip(products, known, strict=True):
            if event == "subscribe":
                feeds[feed].add(i)
            else:
                feeds[feed].discard(i)
            answer = {"event": f"{event}d", "feed": feed, "product_ids": [str(p).upper()]}
            await conn.send(encode(answer))
            if event == "subscribe":
                await self._snapshot(conn, feed, i)
        conn.symbols = sorted(feeds["trade"] | feeds["ticker"])
        conn.wake.set()

    async def _snapshot(self, conn: Conn, feed: str, i: int) -> None:
        if feed == "trade":
            items = list(reversed(self._recent[i]))  # newest first
            if not items:
                return
            msg = (f'{{"feed":"trade_snapshot","product_id":"{self.wire[i]}",'
                   f'"trades":[{",".join(items)}]}}')  # fmt: skip
        else:
            mid = float(self.market.mid[i])
            dec = int(self.market.decimals[i])
            bid = round(mid * (1 - HALF_SPREAD), dec)
            ask = max(round(mid * (1 + HALF_SPREAD), dec), bid + 10.0**-dec)
            msg = self._ticker(i, time.time_ns(), bid, 1.0, round(ask, dec), 1.0)
        if self.keep_log:
            self.sent.append(msg)
        await conn.send(msg)

    def _ticker(self, i: int, ts: int, bid: float, bq: float, ask: float, aq: float) -> str:
        ms = ts // 1_000_000
        mid = (bid + ask) / 2
        pid = self.wire[i]
        perp = self.perpetual[i]
        text = (
            f'{{"time":{ms},"feed":"ticker","product_id":"{pid}","bid":{bid!r},"ask":{ask!r},'
            f'"bid_size":{self._contracts(i, bq, bid)!r},'
            f'"ask_size":{self._contracts(i, aq, ask)!r},"volume":1234.0,"dtm":0,'
            f'"leverage":"50x","index":{mid * 0.9999!r},"premium":0.01,"last":{mid!r},'
            f'"change":0.0,"suspended":false,"tag":"{"perpetual" if perp else "quarter"}",'
            f'"pair":"{pid[3:]}","openInterest":{OPEN_INTEREST!r},"markPrice":{mid!r},'
            f'"maturityTime":0,"post_only":false'
        )
        if perp:
            nxt = (ms // _HOUR_MS + 1) * _HOUR_MS
            text += (
                f',"funding_rate":{FUNDING_RATE * mid!r},"relative_funding_rate":'
                f'{FUNDING_RATE!r},"relative_funding_rate_prediction":{FUNDING_PREDICTION!r},'
                f'"next_funding_rate_time":{nxt}'
            )
        return text + "}"

    # -- market messages -----------------------------------------------------------------------
    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        feeds: dict[str, set[int]] = conn.state["feeds"]
        trades_on, tickers_on = feeds["trade"], feeds["ticker"]
        out: list[str] = []
        is_quote = ev.is_quote.tolist()
        sym = ev.symbol.tolist()
        tid = ev.trade_id.tolist()
        ts = ev.ts_exchange.tolist()
        price, size, buy = ev.price.tolist(), ev.size.tolist(), ev.taker_buy.tolist()
        bid, bsz = ev.bid.tolist(), ev.bid_size.tolist()
        ask, asz = ev.ask.tolist(), ev.ask_size.tolist()
        for k in range(len(sym)):
            i = sym[k]
            if is_quote[k]:
                if i in tickers_on:
                    out.append(self._ticker(i, ts[k], bid[k], bsz[k], ask[k], asz[k]))
                continue
            side = "buy" if buy[k] else "sell"
            every = self.liquidation_every
            kind = "liquidation" if every and tid[k] % every == 0 else "fill"
            item = (
                f'{{"feed":"trade","product_id":"{self.wire[i]}","uid":"{uuid.uuid4()}",'
                f'"side":"{side}","type":"{kind}","seq":{tid[k]},"time":{ts[k] // 1_000_000},'
                f'"qty":{self._contracts(i, size[k], price[k])!r},"price":{price[k]!r}}}'
            )
            self._recent[i].append(item)
            if i in trades_on:
                out.append(item)
        if self.keep_log:
            self.sent.extend(out)
        return out

    def malformed_message(self) -> str:
        return '{"feed":"trade","product_id":"PF_XBTUSD","price":"oops"'
