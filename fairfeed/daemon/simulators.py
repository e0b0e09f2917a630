"""The child that hosts local provider servers: generated markets and capture replays."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fairfeed.core.config import Config, ProviderConfig
from fairfeed.core.counters import Slot
from fairfeed.daemon.child import EXIT_OK, Heartbeat, enter_child, sigterm_event
from fairfeed.ipc.control import ControlBlock
from fairfeed.local.catalog import local_server
from fairfeed.local.replay import ReplayServer

log = logging.getLogger("fairfeed.simulators")


@dataclass
class SimulatorHost:
    """Serves every provider with a ``[providers.serve]`` or ``[providers.replay]`` table, each in
    its own protocol, on ports fixed up front.

    Ports are chosen by the supervisor before the first fork, so a restarted host comes back
    on the same port and the adapters simply reconnect.
    """

    slot: int
    cfg: Config
    control: ControlBlock
    ports: dict[str, int]  # provider name -> port
    name: str = "simulators"

    def served(self) -> list[ProviderConfig]:
        return [p for p in self.cfg.providers if p.serve is not None or p.replay is not None]

    def main(self) -> int:
        """Child entry point (runs after fork)."""
        enter_child(self.name, self.cfg.daemon.log_level, self.control, self.slot)
        return asyncio.run(self._run())

    async def _run(self) -> int:
        stop = sigterm_event()
        servers = []
        for p in self.served():
            server = local_server(self.cfg, p, self.ports[p.name])
            await server.start()
            servers.append(server)
            log.info("serving %s (%s) on port %d", p.name, p.kind, self.ports[p.name])
        replays = [s for s in servers if isinstance(s, ReplayServer) and s.protocol is not None]
        done = asyncio.create_task(self._announce_end(replays)) if replays else None
        self.control.set(self.slot, Slot.READY, 1)
        heartbeat = Heartbeat(self.control, self.slot, self.cfg.daemon.heartbeat_interval)
        while not stop.is_set():
            if not heartbeat.beat():
                break
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.daemon.heartbeat_interval / 2)
            except TimeoutError:
                pass
        if done is not None:
            done.cancel()
        for server in servers:
            await server.stop()
        return EXIT_OK

    async def _announce_end(self, replays: list[ReplayServer]) -> None:
        """Tell the supervisor (``fairfeed replay``) that every capture was played, and how many
        frames that took, so it can stop once the ingest workers have read them all."""
        await asyncio.gather(*(r.finished.wait() for r in replays))
        self.control.set(self.slot, Slot.REPLAY_SENT, sum(r.sent for r in replays))
        self.control.set(self.slot, Slot.REPLAY_DONE, 1)
        log.info("every capture played to its end")
