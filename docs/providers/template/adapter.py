"""The venue's adapter on the shared WebSocket machinery: what to send and what answers mean.

Connections, batching, reconnects, liveness, health records and bad frames are
:mod:`fairfeed.providers.wsbase`'s. A new kind also needs: its options dataclass in
``fairfeed/core/options.py`` (registered in ``OPTIONS``, which makes it a kind), its line in
``providers/catalog.py``, a local server in ``fairfeed/local/`` (``local/catalog.py``), tests in
``tests/providers/`` and a page in ``docs/providers/``.
"""

from __future__ import annotations

import itertools

from fairfeed.core.records import KIND_TRADE
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.base import IngestContext
from fairfeed.providers.wsbase import WsAdapter, WsConnection

from .parse import TemplateParser
from .symbols import to_symbol
from .wire import Message, subscribe


class TemplateAdapter(WsAdapter):
    """Streams ``ctx.subscriptions`` (trades) from the venue at ``ctx.url``."""

    parser_class = TemplateParser
    gap_kinds = (KIND_TRADE,)  # trade ids are contiguous per symbol: the base tracks gaps
    max_streams_per_connection = 200  # the venue's documented limit
    streams_per_subscription = 1  # venue streams one subscription takes
    subscribe_batch = 100
    stale_after = 10.0  # heartbeats every second

    def __init__(self, ctx: IngestContext) -> None:
        super().__init__(ctx)
        self._ids = itertools.count(1)
        self._pending: dict[int, set[int]] = {}  # connection index -> unanswered request ids

    def subscribe_messages(self, conn: WsConnection, subs: tuple[Subscription, ...]) -> list:
        msgs, ids = [], set()
        for batch in self.batches([to_symbol(s.instrument) for s in subs], self.subscribe_batch):
            rid = next(self._ids)
            ids.add(rid)
            msgs.append(subscribe(batch, rid))
        self._pending[conn.index] = ids
        return msgs

    def on_control(self, conn: WsConnection, msg: object) -> None:
        pending = self._pending.get(conn.index, set())
        if not isinstance(msg, Message) or msg.req_id not in pending:
            return  # an answer to an older connection's request
        if msg.type == "error":
            pending.clear()
            conn.refuse(f"request {msg.req_id}: {msg.message}")
        else:
            pending.discard(msg.req_id)
            if not pending:
                conn.acknowledge()
