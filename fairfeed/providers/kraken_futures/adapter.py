"""Kraken Futures v1 adapter: ``trade``, ``ticker`` and ``heartbeat`` feeds on the shared
WebSocket machinery.

Kraken Futures-specific behaviour, the rest being :mod:`fairfeed.providers.wsbase`:

* per instrument two streams, ``trade`` (its ``trade_snapshot`` of recent trades is history:
  not published) and ``ticker`` (top of book, mark and index price, funding, open interest;
  about once a second), plus one ``heartbeat`` feed per connection;
* Kraken answers every *product* of a request (``subscribed``); a connection counts as
  subscribed once every (feed, product) and the heartbeat feed are answered. A product
  answered ``subscribed_failed`` is counted and reported (STATUS record) without reconnecting;
  an ``error`` event (``"Invalid product id"``, ``"Json Error"``: it names no product) while a
  subscription waits refuses the connection, which reconnects with backoff (at least
  ``rate_limit_pause``). Unknown product ids are mostly caught at load: the configuration
  checks every name against the rule or the ``products`` option;
* liveness: the heartbeat feed keeps a quiet market's connection alive, and Kraken closes a
  connection that has not pinged for 60 s: a WebSocket ping every ``ping_interval`` (option,
  default 30 s) whatever the traffic;
* ``alert`` events are logged.
"""

from __future__ import annotations

import asyncio
import logging

from fairfeed.core.counters import Slot
from fairfeed.core.options import KrakenFuturesOptions
from fairfeed.core.records import KIND_TRADE, STATUS_SUBSCRIBE_ERROR
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext, Limits
from fairfeed.providers.kraken_futures.parse import KrakenFuturesParser
from fairfeed.providers.kraken_futures.symbols import product_id
from fairfeed.providers.kraken_futures.wire import Alert, Answer, Error, subscribe
from fairfeed.providers.wsbase import WsAdapter, WsConnection

log = logging.getLogger(__name__)

FEEDS = ("trade", "ticker")
HEARTBEAT = ("heartbeat", "")  # the heartbeat feed's (feed, product) key


class KrakenFuturesAdapter(WsAdapter):
    """Streams trades, top of book and derivatives data of ``ctx.subscriptions`` from Kraken
    Futures' v1 API."""

    gap_kinds = (KIND_TRADE,)  # trade `seq` is contiguous per product
    max_streams_per_connection = 200  # Kraken publishes no limit: a conservative default
    # No per-IP connection or message limit is documented for the public feeds (Kraken's
    # futures rate limits, docs.kraken.com/api/docs/guides/futures-rate-limits, are REST cost
    # budgets): not paced; requests go out subscribe_interval apart per connection.
    limits = Limits()
    streams_per_subscription = len(FEEDS)  # trade and ticker
    subscribe_batch = 100  # products per subscribe request
    stale_after = 15.0  # tickers every second per product, and heartbeats
    min_record_bytes = 40
    parser_class = KrakenFuturesParser
    options: KrakenFuturesOptions

    def __init__(self, ctx: IngestContext) -> None:
        super().__init__(ctx)
        self.ping_interval = self.options.ping_interval
        self._pending: dict[int, set[tuple[str, str]]] = {}  # conn index -> (feed, product)
        self._pingers: set[asyncio.Task] = set()
        self.pings = 0
        self.product_errors = 0

    def parser_variant(self) -> dict[str, object]:
        return {"products": self.options.products, "contracts": self.options.contracts}

    # -- protocol hooks ------------------------------------------------------------------------
    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        products = [product_id(s.instrument, self.options.products) for s in subs]
        self._pending[conn.index] = {(f, p) for f in FEEDS for p in products} | {HEARTBEAT}
        msgs = [subscribe("heartbeat")]
        for feed in FEEDS:
            msgs += [subscribe(feed, b) for b in self.batches(products, self.subscribe_batch)]
        return msgs

    def unsubscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        products = [product_id(s.instrument, self.options.products) for s in subs]
        return [subscribe(f, b, "unsubscribe") for f in FEEDS
                for b in self.batches(products, self.subscribe_batch)]  # fmt: skip

    def on_open(self, conn: WsConnection) -> None:
        if self.ping_interval > 0:
            task = asyncio.get_running_loop().create_task(self._ping(conn, conn.transport))
            self._pingers.add(task)
            task.add_done_callback(self._pingers.discard)

    async def _ping(self, conn: WsConnection, transport) -> None:
        """WebSocket pings on one connection until it is replaced or the adapter stops."""
        while True:
            await asyncio.sleep(self.ping_interval)
            if conn.transport is not transport or self.stopping.is_set():
                return
            if transport is None or transport.is_disconnected:
                return
            transport.send_ping()
            self.pings += 1

    def on_control(self, conn: WsConnection, msg: object) -> None:
        t = type(msg)
        if t is Answer:
            pending = self._pending.get(conn.index)
            if pending is None or msg.event not in ("subscribed", "subscribed_failed"):
                return  # an unsubscribe answer
            keys = [(msg.feed, p) for p in msg.product_ids] or [(msg.feed, "")]
            if not any(k in pending for k in keys):
                return  # an answer to an older session's request
            pending.difference_update(keys)
            if msg.event == "subscribed_failed":
                self.product_errors += 1
                self.subscribe_errors += 1
                self.ctx.counters.add(Slot.SUBSCRIBE_ERRORS)
                conn.status(STATUS_SUBSCRIBE_ERROR)
                self.conn_log(f"{conn.name}: {msg.feed} {list(msg.product_ids)} refused")
            if not pending:
                conn.acknowledge()
        elif t is Error:
            pending = self._pending.get(conn.index)
            if pending:
                pending.clear()  # one refusal per attempt: later answers are stale
                conn.refuse(f"Kraken Futures error: {msg.message}", self.rate_limit_pause)
            else:
                self.conn_log(f"{conn.name}: Kraken Futures error: {msg.message}")
        elif t is Alert:
            self.conn_log(f"{conn.name}: Kraken Futures alert: {msg.message}")
        # Info, Other: liveness only (the base already noted it)

    async def close(self) -> None:
        for t in list(self._pingers):
            t.cancel()
        await super().close()
