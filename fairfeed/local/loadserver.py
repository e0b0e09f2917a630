"""A Binance-protocol server with numbered trades in a process of its own, driven over a pipe.

At the reference load (28k trades/s) the server needs most of a core: in a thread it would fight
its caller (a test, a benchmark) for the GIL. One trade per frame, ``rate`` trades/s over every
connection (each connection paced for its share of the instruments), heartbeats (WebSocket
pings) while the trades are paused. Used by the output-outage tests and ``bench/steady.py``.
"""

from __future__ import annotations

from multiprocessing.connection import Connection

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.binance import BinanceServer
from fairfeed.local.serverprocess import ServerProcess
from fairfeed.local.thread import LoopThread

# The eight instruments of the reference load.
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "ADA-USDT", "DOGE-USDT", "LTC-USDT",
           "BNB-USDT")  # fmt: skip


def _serve(
    pipe: Connection, rate: float, tape: bool, symbols: tuple[str, ...], tick: float | None
) -> None:  # pragma: no cover - runs in the spawned process
    prices = {s: 100.0 * (i + 1) for i, s in enumerate(symbols)}
    cfg = SimulatorConfig(prices, rate, quote_ratio=0.0, heartbeat_interval=0.5, seed=7)
    server = BinanceServer("binance", cfg, tape=tape)
    if tick is not None:
        server.tick = tick
    with LoopThread(server).start() as loop:
        pipe.send(server.url)
        while True:
            cmd, arg = pipe.recv()
            if cmd == "pause":
                loop.call(lambda on=arg: setattr(server.faults, "heartbeats_only", on), timeout=60)
                pipe.send(None)
            elif cmd == "ids":
                ids = loop.call(lambda: server.market.trade_id.tolist(), timeout=60)
                pipe.send(dict(zip(server.market.symbols, ids, strict=True)))
            elif cmd == "connections":
                pipe.send(loop.call(lambda: server.stats.connections_open, timeout=60))
            else:
                return


class LoadServer(ServerProcess):
    """The server process. ``tick``: least wait between two paced writes (None: the server's
    default, 10 ms; smaller spreads the frames more evenly, as a venue's feed is)."""

    what = "the load server"

    def __init__(
        self,
        rate: float,
        tape: bool = False,
        symbols: tuple[str, ...] = SYMBOLS,
        tick: float | None = None,
        paused: bool = False,
    ) -> None:
        super().__init__(_serve, (rate, tape, tuple(symbols), tick))
        self.url = self.address
        if paused:
            self.pause(True)

    def pause(self, on: bool) -> None:
        """Stop (or resume) the trades; pings go on, the connections stay."""
        self._ask(("pause", on))

    def ids(self) -> dict[str, int]:
        """The last trade id generated per instrument (ids start at 1)."""
        return self._ask(("ids", None))

    def connections(self) -> int:
        """Client connections open now."""
        return self._ask(("connections", None))
