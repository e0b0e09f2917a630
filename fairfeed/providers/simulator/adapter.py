"""Simulator provider adapter: the simulator protocol on the shared WebSocket machinery.

Everything about connections, batching, reconnects, liveness and bad frames lives in
:mod:`fairfeed.providers.wsbase`; this module only says how to subscribe and what the
simulator's answers mean.
"""

from __future__ import annotations

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE
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
    # Our own local server: a frame carries `serve.batch` events (no upper bound) and its
    # subscribe answer may list 100_000 streams, so the limit only guards against runaways.
    max_message_bytes = 16 << 20
    parser_class = FrameParser

    def __init__(self, ctx: IngestContext) -> None:
        super().__init__(ctx)
        serve = ctx.provider.serve
        if not ctx.provider.stale_after:  # five missed heartbeats of a served simulator
            self.stale_after = 5 * serve.heartbeat_interval if serve else 5.0
        self._request_ids: dict[int, int] = {}  # connection index -> id of its subscribe

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
