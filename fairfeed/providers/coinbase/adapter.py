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
  (``sequence_num``) and writes its own KIND_GAP records; the adapter's parser subclass keeps
  the running ``gaps`` / ``missed`` totals the shared base counts in Slot.GAPS / Slot.MISSED.
* **Answers.** ``error`` answers refuse the connection's subscription (Slot.SUBSCRIBE_ERRORS, a
  KIND_STATUS record, reconnect with the growing backoff); a rate-limit error (its text names
  the rate limit; Coinbase gives no delay) waits at least ``rate_limit_delay`` seconds.
  Coinbase has no reconnect notice and no documented maximum connection age.
* ``parser.reset()`` on every (re)connect (``on_open``), so numbering restarts cleanly.
* Live changes: removed products are unsubscribed on their open connection
  (``unsubscribe_messages``: the same shape with ``"type":"unsubscribe"``); added ones get new
  connections (the base).
"""

from __future__ import annotations

import json
import logging

from fairfeed.core.backoff import Backoff
from fairfeed.core.counters import Counters, Slot
from fairfeed.core.records import CLASS_CODES, KIND_GAP, KIND_HEARTBEAT, KIND_TRADE
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext
from fairfeed.providers.coinbase.parse import AdvancedTradeParser, ExchangeFeedParser
from fairfeed.providers.coinbase.symbols import to_product_id
from fairfeed.providers.wsbase import WsAdapter, WsConnection

log = logging.getLogger(__name__)

FEEDS = ("exchange", "advanced")
URLS = {
    "exchange": "wss://ws-feed.exchange.coinbase.com",
    "advanced": "wss://advanced-trade-ws.coinbase.com",
}
EXCHANGE_CHANNELS = ("matches", "ticker", "heartbeat")
ADVANCED_CHANNELS = ("market_trades", "ticker")  # plus "heartbeats", once per connection
_KIND = 56  # byte offset of `kind` in a record
_SIZE = 32  # byte offset of `size` (float64)


class _ExchangeParser(ExchangeFeedParser):
    """The Exchange parser, counting the per-product heartbeats it turns into records."""

    __slots__ = ("_counters",)

    def __init__(self, symbols, provider, venue, data_class, counters: Counters) -> None:
        super().__init__(symbols, provider, venue, data_class, trade_sequence=True)
        self._counters = counters

    def parse(self, data, out, start, ts_receive):
        r = ExchangeFeedParser.parse(self, data, out, start, ts_receive)
        if r == 1 and self._u8[(start << 6) + _KIND] == KIND_HEARTBEAT:
            self._counters.add(Slot.HEARTBEATS)
        return r


# The shared base counts the running totals ``gaps`` / ``missed`` of a gap-detecting parser
# (Slot.GAPS / Slot.MISSED). AdvancedTradeParser writes KIND_GAP records but keeps no totals
# (yet): the subclass below keeps them, unless the parser grows its own.
_PARSER_HAS_TOTALS = hasattr(AdvancedTradeParser, "gaps")


class _AdvancedParser(AdvancedTradeParser):
    """The Advanced Trade parser, with gap totals for the base and heartbeats counted."""

    __slots__ = ("_counters",) if _PARSER_HAS_TOTALS else ("_counters", "gaps", "missed")

    def __init__(self, symbols, provider, venue, data_class, counters: Counters) -> None:
        super().__init__(symbols, provider, venue, data_class)
        self._counters = counters
        if not _PARSER_HAS_TOTALS:
            self.gaps = 0
            self.missed = 0

    def parse(self, data, out, start, ts_receive):
        r = AdvancedTradeParser.parse(self, data, out, start, ts_receive)
        if r > 0:
            u8 = self._u8
            off = start << 6
            if not _PARSER_HAS_TOTALS and u8[off + _KIND] == KIND_GAP:  # a gap record is first
                self.gaps += 1
                self.missed += int(out[start]["size"])
            if u8[off + ((r - 1) << 6) + _KIND] == KIND_HEARTBEAT:
                self._counters.add(Slot.HEARTBEATS)
        return r


class CoinbaseAdapter(WsAdapter):
    """Streams ``ctx.subscriptions`` from Coinbase's Exchange feed or Advanced Trade.

    ``backoff`` sets the reconnect schedule; other keyword arguments set the protocol defaults
    (those of :class:`WsAdapter` and ``rate_limit_delay``: the least wait after a rate-limit
    error, as Coinbase names no delay; its limit is 8 requests per second per IP).
    """

    gap_kinds = (KIND_TRADE,)
    max_streams_per_connection = 100  # Coinbase advises spreading products over connections
    subscribe_batch = 100
    stale_after = 10.0  # heartbeats arrive every second on both feeds
    subscribe_timeout = 10.0
    min_record_bytes = 100  # the smallest data message (an AT heartbeat) is ~170 bytes

    rate_limit_delay = 1.0  # least wait after a rate-limit error (Coinbase names no delay)

    def __init__(
        self, ctx: IngestContext, *, backoff: Backoff | None = None, **overrides: object
    ) -> None:
        feed = ctx.provider.feed or "exchange"
        if feed not in FEEDS:
            raise ValueError(f"{ctx.provider.name}: coinbase feed must be one of {FEEDS}: {feed!r}")
        self.feed = feed
        if backoff is not None:
            overrides.update(
                backoff_base=backoff.base, backoff_cap=backoff.cap, backoff_rng=backoff.rng
            )
        self._expected: dict[int, int] = {}  # connection index -> subscribe answers awaited
        super().__init__(ctx, **overrides)

    # -- protocol hooks ------------------------------------------------------------------------
    def make_parser(self, subs: tuple[Subscription, ...]):
        ctx = self.ctx
        if subs:
            provider, venue, dclass = subs[0].provider_id, subs[0].venue_id, subs[0].class_code
        else:
            p, reg = ctx.provider, ctx.registry
            provider, venue = reg.provider_id(p.name), reg.venue_id(p.venue)
            dclass = CLASS_CODES[p.data_class]
        symbols = {to_product_id(s.instrument): s.instrument_id for s in subs}
        if self.feed == "exchange":
            return _ExchangeParser(symbols, provider, venue, dclass, ctx.counters)
        return _AdvancedParser(symbols, provider, venue, dclass, ctx.counters)

    def on_open(self, conn: WsConnection) -> None:
        conn.parser.reset()  # the base resets it too (since 81a1e19); harmless twice
        self._expected[conn.index] = 0

    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        products = list(dict.fromkeys(to_product_id(s.instrument) for s in subs))
        batches = self.batches(products, self.subscribe_batch)
        if self.feed == "exchange":
            msgs = [
                _json({"type": "subscribe", "product_ids": b, "channels": list(EXCHANGE_CHANNELS)})
                for b in batches
            ]
        else:
            hb = {
                "type": "subscribe",
                "product_ids": batches[0] if batches else [],
                "channel": "heartbeats",
            }
            msgs = [_json(hb)]
            msgs += [
                _json({"type": "subscribe", "product_ids": b, "channel": ch})
                for ch in ADVANCED_CHANNELS
                for b in batches
            ]
        self._expected[conn.index] = len(msgs)
        return msgs

    def unsubscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        products = list(dict.fromkeys(to_product_id(s.instrument) for s in subs))
        batches = self.batches(products, self.subscribe_batch)
        if self.feed == "exchange":
            msgs = [
                _json(
                    {"type": "unsubscribe", "product_ids": b, "channels": list(EXCHANGE_CHANNELS)}
                )
                for b in batches
            ]
        else:
            msgs = [
                _json({"type": "unsubscribe", "product_ids": b, "channel": ch})
                for ch in ADVANCED_CHANNELS
                for b in batches
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
            conn.refuse(text, self.rate_limit_delay if limited else 0.0)


def _json(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))
