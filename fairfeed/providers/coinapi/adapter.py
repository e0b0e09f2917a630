"""CoinAPI market-data WebSocket v1 adapter on the shared WebSocket machinery.

Connections, batching, liveness, backoff and bad frames live in
:mod:`fairfeed.providers.wsbase`; this module says how to subscribe and what CoinAPI's answers
mean (details in docs/providers/coinapi.md):

* after connecting we send one ``hello`` (API key, ``heartbeat: true``, data types trade and
  quote, every subscription as an exact ``subscribe_filter_symbol_id`` entry ``SYMBOL$``); a
  ``hello`` replaces the whole scope, so further batches of one connection go as ``subscribe``;
* CoinAPI acknowledges nothing, so a connection counts as subscribed once the requests are sent;
* ``reconnect`` notice → a planned switch at once (make before break, no backoff), well before
  its deadline; each trade is published once across it (``overlap_key``: its uuid's hash);
* ``error`` is permanent (the server closes after it: bad API key, quota, bad request) → counted
  as a refused subscription and retried after the option ``error_retry_after`` seconds, doubling
  per consecutive error up to ``error_retry_cap`` — never a hot loop;
* a heartbeat arrives after every second of silence, so ``stale_after`` (default 10 s) catches a
  dead connection while a quiet market stays connected.
"""

from __future__ import annotations

from fairfeed.core.options import CoinApiOptions
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext, Limits, required_api_key
from fairfeed.providers.coinapi.parse import CoinApiParser
from fairfeed.providers.coinapi.symbols import to_symbol_id
from fairfeed.providers.coinapi.wire import Error, Hello, Reconnect, Subscribe, encode, exact
from fairfeed.providers.wsbase import WsAdapter, WsConnection

DATA_TYPES = ("trade", "quote")


class CoinApiAdapter(WsAdapter):
    """Streams trades and quotes of ``ctx.subscriptions`` (any venue and class) from CoinAPI."""

    acknowledges_subscriptions = False  # CoinAPI sends no subscription acknowledgement
    max_streams_per_connection = 100_000  # no documented limit; one connection carries all
    # CoinAPI limits per API key and plan, not per IP: concurrent connections (a soft limit of
    # one WebSocket connection per subscription) and data types (docs.coinapi.io, market data
    # "API limits and billing metrics"; FAQ "restrictions on usage of real-time protocols").
    # Nothing to pace per IP.
    limits = Limits()
    subscribe_batch = 10_000  # symbol filters per hello / subscribe message
    stale_after = 10.0  # heartbeats come after each second of silence
    min_record_bytes = 80  # a trade message is ~250 bytes for 1 record, a quote ~280 for 2
    gap_kinds = ()  # sequence gaps are checked by the parser per (type, symbol id)
    # Trades carry no number spanning connections, but a uuid (its hash is in ``reserved``): a
    # planned switch publishes each trade once, whichever session delivers it first.
    overlap_key = "reserved"
    api_key_service = "CoinAPI"
    parser_class = CoinApiParser
    options: CoinApiOptions

    def __init__(self, ctx: IngestContext) -> None:
        self.api_key = required_api_key(ctx.provider, self.api_key_service)
        super().__init__(ctx)
        self.error_retry_after = self.options.error_retry_after
        self.error_retry_cap = self.options.error_retry_cap
        self.errors = 0  # error messages received
        self.notices = 0  # reconnect notices received
        self._consecutive: dict[int, int] = {}  # connection index -> errors in a row
        for s in ctx.subscriptions:  # fail at start on a name CoinAPI cannot express
            to_symbol_id(s.venue, s.instrument, s.data_class)

    def parser_variant(self) -> dict[str, object]:
        # CoinAPI numbers per connection: the base resets the parser on every connect and
        # counts the gaps it reports (``gaps`` / ``missed``).
        return {"check_gaps": self.options.check_gaps}

    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        filters = [exact(to_symbol_id(s.venue, s.instrument, s.data_class)) for s in subs]
        out = []
        for i, batch in enumerate(self.batches(filters, self.subscribe_batch)):
            cls = Hello if i == 0 else Subscribe
            out.append(
                encode(
                    cls(
                        apikey=self.api_key,
                        heartbeat=True,
                        subscribe_data_type=list(DATA_TYPES),
                        subscribe_filter_symbol_id=batch,
                    )
                )
            )
        return out

    def on_control(self, conn: WsConnection, msg: object) -> None:
        if isinstance(msg, Reconnect):
            self.notices += 1
            conn.reconnect_soon(
                f"CoinAPI reconnect notice (within {msg.within_seconds:g}s, "
                f"before {msg.before_time or '?'})"
            )
        elif isinstance(msg, Error):
            self.errors += 1
            # Errors in a row grow the wait; a connection that delivered data starts afresh.
            k = 0 if conn.last_data > conn.opened_at else self._consecutive.get(conn.index, 0)
            self._consecutive[conn.index] = k + 1
            delay = min(self.error_retry_cap, self.error_retry_after * 2**k)
            conn.refuse(f"CoinAPI error: {msg.message}", retry_after=delay)
