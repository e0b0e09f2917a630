"""Binance adapter (spot and USD-M futures): combined market streams on the shared WebSocket
machinery.

Per instrument two streams: ``<symbol>@trade`` (or ``@aggTrade`` with ``feed = "aggTrade"``)
and ``<symbol>@bookTicker``. With the option ``market = "usdm"`` (USD-M futures,
``wss://fstream.binance.com``; instruments ``BASE-QUOTE-PERP`` and dated
``BASE-QUOTE-YYMMDD``) the two streams live on different routed endpoints since Binance split
them (2026): ``bookTicker`` on ``<url>/public``, ``aggTrade`` on ``<url>/market`` (there is no
raw ``@trade`` stream); a connection without a route only gets public data, so every group of
instruments gets one connection per route. With the option ``derivatives = true`` (USD-M only)
every instrument also gets ``<symbol>@markPrice@1s`` (mark, index, funding) and
``<symbol>@forceOrder`` (liquidations), both on ``/market``. USD-M allows 200 streams and 10
incoming messages per second per connection. By default the adapter connects to
``<url>/stream`` and sends ``SUBSCRIBE`` requests (``subscribe_batch`` streams each,
``subscribe_interval`` apart: Binance drops a connection that sends more than 5 messages per
second) and waits for every request's ``{"result":null,"id":n}``; with the option
``url_streams = true`` the streams go in the URL instead
(``/stream?streams=a/b/c``, nothing to acknowledge).

Binance-specific behaviour, the rest being :mod:`fairfeed.providers.wsbase`:

* at most 1024 streams per connection (``max_streams_per_connection`` counts *streams*, as
  Binance does; with two streams per instrument a connection carries 512 instruments);
* the server pings every 20 s and drops a client that does not pong within a minute: pings are
  answered by the base at once, and they count as liveness (``stale_after`` default 60 s);
* a connection lives at most 24 hours: we reconnect by plan before that
  (``max_connection_age`` default 23 h 50 min), so the cut never comes as a surprise;
* an error answer to one of our requests (code -1003 = rate limited, or an invalid request)
  refuses the connection's subscription: counted, a STATUS record, reconnect with backoff.
"""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit, urlunsplit

from fairfeed.core.options import BinanceOptions
from fairfeed.core.records import KIND_TRADE
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext, Limits, Rate
from fairfeed.providers.binance.parse import BinanceParser
from fairfeed.providers.binance.symbols import DERIVATIVE_STREAMS, USDM_ROUTES, stream_name
from fairfeed.providers.binance.wire import RATE_LIMIT_CODE, Ack, Error, subscribe
from fairfeed.providers.wsbase import WsAdapter, WsConnection

FEEDS = BinanceOptions.FEEDS[1:]  # "" is the default
MAX_STREAMS = 1024  # Binance's limit per connection
USDM_MAX_STREAMS = 200  # USD-M futures' limit per connection
MAX_AGE = 24 * 3600.0  # Binance closes a connection after 24 hours
# Spot (developers.binance.com/docs/binance-spot-api-docs/web-socket-streams): 300 connection
# attempts per 5 minutes per IP, paced daemon-wide with a burst of 20 (a start opens a few at
# once; a reconnection storm goes on at one per ~1.07 s); per connection 5 incoming messages a
# second, pings and pongs included: our requests keep to 4 (1/3 s apart), one left for a pong.
SPOT_LIMITS = Limits(connect=Rate(300, 300.0, burst=20), connection_messages=Rate(4, 1.0))
# USD-M (developers.binance.com/docs/derivatives/usds-margined-futures/
# websocket-market-streams): 10 incoming messages a second per connection (9 for requests). The
# page names no per-IP connection limit: spot's 300 per 5 minutes is applied (same edge).
USDM_LIMITS = Limits(connect=Rate(300, 300.0, burst=20), connection_messages=Rate(9, 1.0))


class BinanceAdapter(WsAdapter):
    """Streams trades (or aggregate trades) and book tickers of ``ctx.subscriptions``."""

    gap_kinds = (KIND_TRADE,)  # trade ids (aggregate ids) are contiguous per symbol
    max_streams_per_connection = MAX_STREAMS
    streams_per_subscription = 2  # the trade feed and bookTicker
    subscribe_batch = 200  # streams per SUBSCRIBE request
    stale_after = 60.0  # pings every 20 s, data or not
    max_connection_age = MAX_AGE - 600.0
    min_record_bytes = 60
    parser_class = BinanceParser
    options: BinanceOptions

    def __init__(self, ctx: IngestContext) -> None:
        p = ctx.provider
        market = p.options.market if isinstance(p.options, BinanceOptions) else "spot"
        feed = p.feed or ("aggTrade" if market == "usdm" else "trade")
        if feed not in FEEDS:
            raise ValueError(f"{p.name}: unknown Binance feed {feed!r} (known: {FEEDS})")
        if market == "usdm" and feed != "aggTrade":
            raise ValueError(f"{p.name}: USD-M futures have no raw {feed!r} stream: use aggTrade")
        self.feed = feed
        self.market = market
        self.derivatives = isinstance(p.options, BinanceOptions) and p.options.derivatives
        self.limits = USDM_LIMITS if market == "usdm" else SPOT_LIMITS
        self.stream_kinds: tuple[str, ...] = (feed, "bookTicker")
        if self.derivatives:
            self.stream_kinds += DERIVATIVE_STREAMS
        if market == "usdm":  # one connection per route, each carrying its streams
            self.routes = tuple(dict.fromkeys(USDM_ROUTES[k] for k in self.stream_kinds))
            self.streams_per_subscription = max(len(self.kinds(r)) for r in self.routes)
            self.max_streams_per_connection = USDM_MAX_STREAMS
        super().__init__(ctx)
        self.url_streams = self.options.url_streams
        if self.url_streams:
            self.acknowledges_subscriptions = False
        self._ids = itertools.count(1)
        self._pending: dict[int, set[int]] = {}  # connection index -> unanswered request ids

    def kinds(self, route: str = "") -> tuple[str, ...]:
        """The stream kinds a connection of ``route`` carries per instrument."""
        kinds = self.stream_kinds
        return tuple(k for k in kinds if USDM_ROUTES[k] == route) if route else kinds

    def streams(self, subs: tuple[Subscription, ...], route: str = "") -> list[str]:
        """Stream names of ``subs`` on ``route``, in order (per instrument: the trade stream,
        the book ticker, then the derivatives streams)."""
        kinds = self.kinds(route)
        return [stream_name(s.instrument, k, self.market) for s in subs for k in kinds]

    # -- protocol hooks ------------------------------------------------------------------------
    def parser_variant(self) -> dict[str, object]:
        return {"agg": self.feed == "aggTrade", "market": self.market,
                "derivatives": self.derivatives}  # fmt: skip

    def url_for(self, conn: WsConnection) -> str:
        scheme, netloc, path, _, _ = urlsplit(self.ctx.url)
        path = path.rstrip("/")
        if path.endswith("/stream"):
            path = path[: -len("/stream")]
        if conn.route:
            path = f"{path}/{conn.route}"
        path += "/stream"
        streams = self.streams(conn.subs, conn.route)
        query = "streams=" + "/".join(streams) if self.url_streams else ""
        return urlunsplit((scheme, netloc, path, query, ""))

    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        if self.url_streams:
            self._pending[conn.index] = set()
            return []
        msgs = []
        ids = set()
        for batch in self.batches(self.streams(subs, conn.route), self.subscribe_batch):
            rid = next(self._ids)
            ids.add(rid)
            msgs.append(subscribe(batch, rid))
        self._pending[conn.index] = ids
        return msgs

    def on_control(self, conn: WsConnection, msg: object) -> None:
        pending = self._pending.get(conn.index)
        if type(msg) is Ack:
            if pending is not None and msg.id in pending:
                pending.discard(msg.id)
                if not pending:
                    conn.acknowledge()
        elif type(msg) is Error:
            ours = pending is not None and msg.id in pending
            if not ours and (msg.id is not None or not pending):
                return  # an answer to an older attempt's request, or nothing outstanding
            wait = self.rate_limit_pause if msg.code == RATE_LIMIT_CODE else 0.0
            if pending is not None:
                pending.clear()  # one refusal per attempt: later answers are stale
            conn.refuse(f"request {msg.id}: error {msg.code}: {msg.msg}", retry_after=wait)
