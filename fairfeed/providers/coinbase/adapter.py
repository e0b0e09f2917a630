"""Coinbase adapters: the Exchange feed and Advanced Trade market data on the shared WS machinery.

``CoinbaseAdapter(ctx)`` picks the protocol from ``ctx.provider.feed``: ``"exchange"`` (the
default; ``wss://ws-feed.exchange.coinbase.com``) or ``"advanced"``
(``wss://advanced-trade-ws.coinbase.com``). Connections, batching, reconnects with backoff,
staggered subscribes, liveness, health records and dead letters are
:mod:`fairfeed.providers.wsbase`'s; this module says what to send and what the answers mean.

* **Exchange feed.** One ``{"type":"subscribe","product_ids":[...],"channels":["matches",
  "ticker","heartbeat"]}`` per ``subscribe_batch`` products; each is answered by one
  ``subscriptions`` message, and the connection is acknowledged once every request has been
  answered. The ``heartbeat`` channel gives one heartbeat per product per second: a heartbeat
  record per product tells a quiet product from a dead connection. The parser runs with
  ``trade_sequence=True``: a trade's ``sequence`` is its ``trade_id``, which rises by one per
  trade per product (the venue ``sequence`` also counts order-book messages we do not receive),
  so the shared gap tracker follows KIND_TRADE.
* **Advanced Trade.** One ``{"type":"subscribe","product_ids":[...],"channel":...}`` per
  channel and batch (``heartbeats`` first, then ``market_trades`` and ``ticker``), each
  answered by a ``subscriptions`` message. Without ``heartbeats`` the channels go quiet, so it
  is always subscribed. ``trade_id`` rises by one per trade per product: the gap tracker
  follows KIND_TRADE too. In addition the parser numbers the connection's messages
  (``sequence_num``) and writes its own KIND_GAP records, with the running ``gaps`` / ``missed``
  totals of the parser protocol that the shared base counts in Slot.GAPS / Slot.MISSED.
* **Answers.** ``error`` answers refuse the connection's subscription (Slot.SUBSCRIBE_ERRORS, a
  KIND_STATUS record, reconnect with the growing backoff); a rate-limit error (its text names
  the rate limit; Coinbase gives no delay) waits at least the option ``rate_limit_pause``.
  Coinbase has no reconnect notice and no documented maximum connection age.
* The base resets the parser on every (re)connect, so numbering restarts cleanly.
* Live changes: removed products are unsubscribed on their open connection
  (``unsubscribe_messages``: the same shape with ``"type":"unsubscribe"``); added ones get new
  connections (the base).
"""

from __future__ import annotations

import logging

from fairfeed.core.options import CoinbaseOptions
from fairfeed.core.records import KIND_TRADE
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext, Limits, Rate
from fairfeed.providers.coinbase.parse import AdvancedTradeParser, ExchangeFeedParser
from fairfeed.providers.coinbase.symbols import to_product_id
from fairfeed.providers.coinbase.wire import (
    ADVANCED_CHANNELS,
    ADVANCED_HEARTBEATS,
    advanced_request,
    exchange_request,
)
from fairfeed.providers.wsbase import WsAdapter, WsConnection

log = logging.getLogger(__name__)

FEEDS = CoinbaseOptions.FEEDS[1:]  # "" is the default
URLS = {
    "exchange": "wss://ws-feed.exchange.coinbase.com",
    "advanced": "wss://advanced-trade-ws.coinbase.com",
}


class CoinbaseAdapter(WsAdapter):
    """Streams ``ctx.subscriptions`` from Coinbase's Exchange feed or Advanced Trade.

    Coinbase names no delay after a rate-limit error (its limit is 8 requests per second per
    IP): the option ``rate_limit_pause`` is the least wait.
    """

    gap_kinds = (KIND_TRADE,)
    # Per IP, paced across every worker of the daemon: 8 new connections a second (Exchange:
    # "requests per second per IP: 8", bursts up to 20; Advanced Trade allows 750) and 8
    # unauthenticated messages a second (Advanced Trade; Exchange allows 100). The stricter of
    # the two feeds' figures, for both. Sources: docs.cdp.coinbase.com/exchange/websocket-feed/
    # rate-limits and .../advanced-trade-apis/websocket/websocket-rate-limits
    limits = Limits(connect=Rate(8, 1.0), message=Rate(8, 1.0))
    max_streams_per_connection = 100  # Coinbase advises spreading products over connections
    subscribe_batch = 100
    stale_after = 10.0  # heartbeats arrive every second on both feeds
    min_record_bytes = 100  # the smallest data message (an AT heartbeat) is ~170 bytes
    # Advanced Trade answers a market_trades subscription with one snapshot message of the
    # recent trades of every product in the request (up to 100 products per connection, a few
    # hundred trades each at ~150 bytes): several MiB, where the base's 1 MiB would refuse it.
    max_message_bytes = 8 << 20
    options: CoinbaseOptions

    def __init__(self, ctx: IngestContext) -> None:
        feed = ctx.provider.feed or "exchange"
        if feed not in FEEDS:
            raise ValueError(f"{ctx.provider.name}: coinbase feed must be one of {FEEDS}: {feed!r}")
        self.feed = feed
        self.parser_class = ExchangeFeedParser if feed == "exchange" else AdvancedTradeParser
        self._expected: dict[int, int] = {}  # connection index -> subscribe answers awaited
        super().__init__(ctx)

    # -- protocol hooks ------------------------------------------------------------------------
    def parser_variant(self) -> dict[str, object]:
        if self.feed == "exchange":
            # trade ids, +1 per trade per product, as the sequence the base's tracker follows
            return {"trade_sequence": True}
        return {"snapshot_trades": self.options.snapshot_trades}

    def on_open(self, conn: WsConnection) -> None:
        self._expected[conn.index] = 0

    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        products = list(dict.fromkeys(to_product_id(s.instrument) for s in subs))
        batches = self.batches(products, self.subscribe_batch)
        if self.feed == "exchange":
            msgs = [exchange_request("subscribe", b) for b in batches]
        else:
            hb = batches[0] if batches else []
            msgs = [advanced_request("subscribe", hb, ADVANCED_HEARTBEATS)]
            msgs += [
                advanced_request("subscribe", b, ch) for ch in ADVANCED_CHANNELS for b in batches
            ]
        self._expected[conn.index] = len(msgs)
        return msgs

    def unsubscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        products = list(dict.fromkeys(to_product_id(s.instrument) for s in subs))
        batches = self.batches(products, self.subscribe_batch)
        if self.feed == "exchange":
            msgs = [exchange_request("unsubscribe", b) for b in batches]
        else:
            msgs = [
                advanced_request("unsubscribe", b, ch) for ch in ADVANCED_CHANNELS for b in batches
            ]
        # Each is answered by a `subscriptions` message: not an acknowledgement of ours.
        self._expected[conn.index] = self._expected.get(conn.index, 0) + len(msgs)
        return msgs

    def on_control(self, conn: WsConnection, msg: object) -> None:
        kind = getattr(msg, "type", "")
        if getattr(msg, "channel", "") == "subscriptions" or kind == "subscriptions":
            left = self._expected.get(conn.index, 0) - 1
            self._expected[conn.index] = left
            if left <= 0:
                conn.acknowledge()
        elif kind == "error":
            message = getattr(msg, "message", "")
            reason = getattr(msg, "reason", "")
            text = f"{message}: {reason}" if reason else message
            limited = "rate limit" in text.lower()
            conn.refuse(text, self.rate_limit_pause if limited else 0.0)
