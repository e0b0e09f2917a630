"""Health of one provider connection: the rules every adapter follows, in one place.

Used by each connection of the WebSocket base and by Kaiko's gRPC session:

* **Status.** KIND_STATUS records (connected / disconnected / subscription refused) go into the
  ring after the data read before the change (``flush`` first), one per venue the connection
  carries.
* **Heartbeats.** Every heartbeat is counted (Slot.HEARTBEATS); a KIND_HEARTBEAT record is
  written at most once per :data:`HEARTBEAT_RECORD_INTERVAL` per connection.
* **Connected.** Slot.CONNECTED is raised once when the connection comes up and lowered once
  when it goes down, however often either is reported.
* **Stale.** A WebSocket connection with no sign of life (data, heartbeat or ping) for
  ``stale_after`` seconds is dead and is replaced. (Kaiko's gRPC channel has no heartbeat to
  judge by: HTTP/2 keepalive tells whether it is alive, and a quiet call is not a dead one.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from fairfeed.core.counters import Slot
from fairfeed.core.records import KIND_HEARTBEAT, KIND_STATUS, health_records
from fairfeed.providers.base import IngestContext

log = logging.getLogger(__name__)

HEARTBEAT_RECORD_INTERVAL = 1.0  # seconds between two heartbeat records of one connection


class Health:
    """Health records and counters of one connection carrying ``venues`` (with their classes).

    ``flush`` hands the connection's buffered data to the ring, so a record about a change
    follows the data read before it.
    """

    def __init__(
        self,
        ctx: IngestContext,
        name: str,
        provider_id: int,
        venues: Sequence[int],
        classes: Sequence[int],
        flush: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.provider_id = provider_id
        self.venues = list(venues)
        self.classes = list(classes)
        self.flush = flush
        self.up = False  # counted in Slot.CONNECTED
        self.next_heartbeat_record = 0.0

    def status(self, code: int) -> None:
        """A KIND_STATUS record with ``code`` (STATUS_*) after the data buffered so far."""
        self._record(KIND_STATUS, code)

    def heartbeat(self, now: float) -> None:
        """The provider said it is alive: counted; a heartbeat record at most once a second."""
        self.ctx.counters.add(Slot.HEARTBEATS)
        if now >= self.next_heartbeat_record:
            self.next_heartbeat_record = now + HEARTBEAT_RECORD_INTERVAL
            self._record(KIND_HEARTBEAT, 0)

    def connected(self, up: bool) -> None:
        """Count the connection in Slot.CONNECTED while it is up (idempotent both ways)."""
        if up != self.up:
            self.up = up
            self.ctx.counters.add(Slot.CONNECTED, 1 if up else -1)

    @staticmethod
    def stale(now: float, last_alive: float, stale_after: float) -> bool:
        """Whether a connection last alive at ``last_alive`` (monotonic) is dead by ``now``."""
        return now - last_alive > stale_after

    def _record(self, kind: int, flags: int) -> None:
        self.flush()
        event = health_records(kind, flags, self.provider_id, self.venues, self.classes)
        try:
            self.ctx.emit(event)
        except Exception:
            log.exception("%s: emit failed, a %s record lost", self.name, kind)
