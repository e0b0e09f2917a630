"""Simulator provider adapter: the simulator protocol on the shared WebSocket machinery.

Everything about connections, batching, reconnects, liveness and bad frames lives in
:mod:`fairfeed.providers.wsbase`; this module only says how to subscribe and what the
simulator's answers mean.
"""

from __future__ import annotations

from fairfeed.core.backoff import Backoff
from fairfeed.core.records import CLASS_CODES, KIND_ASK, KIND_BID, KIND_TRADE
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext
from fairfeed.providers.simulator.parse import FrameParser
from fairfeed.providers.simulator.wire import Error, Subscribe, Subscribed, encode
from fairfeed.providers.wsbase import WsAdapter, WsConnection


class SimulatorAdapter(WsAdapter):
    """Streams the subscriptions from a simulator server at ``ctx.url``."""

    # The simulator numbers events per instrument, trades and quotes alike (a quote's bid and
    # ask records share one number).
    gap_kinds = (KIND_TRADE, KIND_BID, KIND_ASK)
    max_streams_per_connection = 100_000
    subscribe_batch = 100_000
    subscribe_timeout = 5.0

    def __init__(
        self, ctx: IngestContext, *, backoff: Backoff | None = None, **overrides: object
    ) -> None:
        serve = ctx.provider.serve
        if "stale_after" not in overrides and not ctx.provider.stale_after:
            overrides["stale_after"] = 5 * serve.heartbeat_interval if serve else 5.0
        if backoff is not None:
            overrides.update(
                backoff_base=backoff.base, backoff_cap=backoff.cap, backoff_rng=backoff.rng
            )
        super().__init__(ctx, **overrides)
        self._request_ids: dict[int, int] = {}  # connection index -> id of its subscribe

    def make_parser(self, subs: tuple[Subscription, ...]) -> FrameParser:
        p = self.ctx.provider
        reg = self.ctx.registry
        return FrameParser(
            {s.instrument: s.instrument_id for s in subs},
            reg.provider_id(p.name),
            reg.venue_id(p.venue),
            CLASS_CODES[p.data_class],
        )

    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        rid = self._request_ids.get(conn.index, 0) + 1
        self._request_ids[conn.index] = rid
        symbols = [s.instrument for s in subs]
        return [encode(Subscribe(id=rid, symbols=symbols))]

    def on_control(self, conn: WsConnection, msg: object) -> None:
        if isinstance(msg, Subscribed):
            if msg.id == self._request_ids.get(conn.index):
                conn.acknowledge()
        elif isinstance(msg, Error):
            conn.refuse(f"request {msg.id}: {msg.message}")
