"""Kraken spot v2 adapter: ``trade`` and ``ticker`` channels on the shared WebSocket machinery.

Kraken-specific behaviour, the rest being :mod:`fairfeed.providers.wsbase`:

* per instrument two streams, ``trade`` (subscribed with ``snapshot: false``: the 50 recent
  trades a snapshot replays would be duplicates after a reconnect) and ``ticker`` (with
  ``event_trigger: "bbo"``, so it follows the best bid / offer, and its snapshot: the current
  top of book at once);
* Kraken answers every *symbol* of a request; a connection counts as subscribed once every
  symbol of every request is answered. A refused symbol (``"Currency pair not supported"``,
  the answer names the symbol) is counted and reported (STATUS record) but does not reconnect:
  retrying cannot help. A refusal of the whole request (no symbol: rate limit, too many
  subscriptions) reconnects with backoff, as does ``{"Error": "Exceeded msg rate"}`` (the
  request was dropped unanswered) while a subscription waits for its answers: after at least
  ``rate_limit_pause``;
* liveness: the ``heartbeat`` channel (about 1/s once subscribed) keeps a quiet market's
  connection alive, and the adapter sends an application ``ping`` every ``ping_interval``
  seconds (option, default 10) whose ``pong`` counts as liveness too;
* ``status`` messages: a system that is not ``online`` is logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from fairfeed.core.counters import Slot
from fairfeed.core.options import KrakenOptions
from fairfeed.core.records import KIND_TRADE, STATUS_SUBSCRIBE_ERROR
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext, Limits, Rate
from fairfeed.providers.kraken.parse import KrakenParser
from fairfeed.providers.kraken.symbols import to_symbol
from fairfeed.providers.kraken.wire import (
    RATE_LIMIT_ERROR,
    Answer,
    Pong,
    Refusal,
    Status,
    ping,
    subscribe,
)
from fairfeed.providers.wsbase import WsAdapter, WsConnection

log = logging.getLogger(__name__)

CHANNELS = ("trade", "ticker")


class KrakenAdapter(WsAdapter):
    """Streams trades and top of book of ``ctx.subscriptions`` from Kraken's v2 API."""

    gap_kinds = (KIND_TRADE,)  # trade ids are contiguous per symbol
    max_streams_per_connection = 400  # Kraken publishes no limit: a conservative default
    # Per IP: "approximately 150" connection attempts per rolling 10 minutes (Cloudflare; over
    # it the IP is banned for 10 minutes): 140 declared for the "approximately", a burst of 10.
    # Kraken documents no per-IP message limit (its per-connection rate varies with load and
    # is answered "Exceeded msg rate"). Source: docs.kraken.com/api/docs/guides/spot-ws-intro
    # ("General Considerations")
    limits = Limits(connect=Rate(140, 600.0, burst=10))
    streams_per_subscription = len(CHANNELS)  # trade and ticker
    subscribe_batch = 100  # symbols (streams) per subscribe request
    stale_after = 10.0  # heartbeats every second once subscribed
    min_record_bytes = 60
    parser_class = KrakenParser
    options: KrakenOptions

    def __init__(self, ctx: IngestContext) -> None:
        super().__init__(ctx)
        self.ping_interval = self.options.ping_interval
        self._ids = itertools.count(1)
        self._pending: dict[int, dict[int, int]] = {}  # conn index -> req_id -> symbols left
        self._pingers: set[asyncio.Task] = set()
        self.pongs = 0
        self.symbol_errors = 0

    # -- protocol hooks ------------------------------------------------------------------------
    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        symbols = [to_symbol(s.instrument) for s in subs]
        pending: dict[int, int] = {}
        msgs = []
        for channel in CHANNELS:
            extra = {"snapshot": False} if channel == "trade" else {"event_trigger": "bbo"}
            for batch in self.batches(symbols, self.subscribe_batch):
                rid = next(self._ids)
                pending[rid] = len(batch)
                msgs.append(subscribe(channel, batch, rid, **extra))
        self._pending[conn.index] = pending
        return msgs

    def on_open(self, conn: WsConnection) -> None:
        if self.ping_interval > 0:
            task = asyncio.get_running_loop().create_task(self._ping(conn, conn.transport))
            self._pingers.add(task)
            task.add_done_callback(self._pingers.discard)

    async def _ping(self, conn: WsConnection, transport: object) -> None:
        """Application pings on one connection until it is replaced or the adapter stops."""
        while True:
            await asyncio.sleep(self.ping_interval)
            if conn.transport is not transport or self.stopping.is_set():
                return
            conn.send(ping(next(self._ids)))

    def on_control(self, conn: WsConnection, msg: object) -> None:
        t = type(msg)
        if t is Answer:
            pending = self._pending.get(conn.index)
            if msg.method != "subscribe" or pending is None or msg.req_id not in pending:
                return  # an unsubscribe, or an answer to an older connection's request
            if not msg.success:
                if not msg.symbol or msg.error == RATE_LIMIT_ERROR:
                    wait = self.rate_limit_pause if msg.error == RATE_LIMIT_ERROR else 0.0
                    pending.clear()  # one refusal per attempt: later answers are stale
                    conn.refuse(f"request {msg.req_id}: {msg.error}", retry_after=wait)
                    return
                self.symbol_errors += 1
                self.subscribe_errors += 1
                self.ctx.counters.add(Slot.SUBSCRIBE_ERRORS)
                conn.status(STATUS_SUBSCRIBE_ERROR)
                self.conn_log(f"{conn.name}: {msg.symbol} refused: {msg.error}")
            left = pending[msg.req_id] - 1
            if left > 0:
                pending[msg.req_id] = left
                return
            del pending[msg.req_id]
            if not pending:
                conn.acknowledge()
        elif t is Refusal:
            pending = self._pending.get(conn.index)
            if pending:
                pending.clear()
                conn.refuse(msg.error, retry_after=self.rate_limit_pause)
            else:  # a ping or an unsubscribe dropped: nothing waits on it
                self.conn_log(f"{conn.name}: Kraken dropped a request: {msg.error}")
        elif t is Pong:
            self.pongs += 1
        elif t is Status and msg.system != "online":
            self.conn_log(f"{conn.name}: Kraken system status {msg.system!r}")
        # Other: liveness only (the base already noted it)

    async def close(self) -> None:
        for t in list(self._pingers):
            t.cancel()
        await super().close()
