"""The naive baseline the daemon is measured against: one process, one asyncio loop.

``websockets`` client connections to the simulated providers (the same subscribe protocol as the
daemon), ``json.loads`` per frame, and per event: update the last price of (instrument,
provider), fair price = ``statistics.median`` of the providers' last prices of that instrument,
then one ``producer.produce`` per record (a JSON value per record: a trade is one record, a quote
two, bid and ask, as in the daemon) plus one per fair price. Same producer settings as the
daemon's sink (acks=all, idempotence, lz4, ``kafka.linger_ms``), ``poll(0)`` after every frame.

Which events move a provider's last price follows ``fair.inputs`` (trades: trade prices only;
quotes: quote mids; both). Every event that moves one produces a fair price (no rate limit, no
staleness: that is the naive part). Connections mirror the daemon's: one per (provider, ingest
partition) with the same instruments (``fairfeed.core.partition``), so that simulators with a
``max_events`` per connection hand both pipelines the same workload.

Providers of kind ``binance`` (the fixed-rate benchmark's load server) are read the same naive way:
one ``/stream?streams=…@trade`` connection per ingest partition, ``json.loads`` per frame, one
record and one fair price produced per trade.

Run: ``python -m bench.baseline --config FILE [--status-interval S]``. It runs until SIGTERM or
SIGINT, then flushes the producer and exits. With ``--status-interval`` it prints one JSON line
of counters to stdout every S seconds (and a final one), which the e2e harness reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field

from confluent_kafka import Producer
from websockets.asyncio.client import connect

from fairfeed.core import config as config_mod
from fairfeed.core.config import Config
from fairfeed.daemon.run import assign_subscriptions, build_registry
from fairfeed.kafka.sink import producer_config
from fairfeed.providers.binance.symbols import stream_name


@dataclass
class BaselineStats:
    frames: int = 0
    events: int = 0
    records: int = 0  # tick records produced
    fair: int = 0  # fair prices produced
    delivered: int = 0  # Kafka delivery reports without error
    errors: int = 0  # delivery reports with an error
    retries: int = 0  # produce retried after BufferError
    connections: int = 0  # connections subscribed so far
    parse_errors: int = 0
    queue: int = 0  # messages waiting in librdkafka at the last status

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Baseline:
    """The naive pipeline for one configuration (providers with ``url``)."""

    cfg: Config
    stats: BaselineStats = field(default_factory=BaselineStats)

    def __post_init__(self) -> None:
        kc = self.cfg.kafka
        conf = producer_config(kc)
        conf["on_delivery"] = self._on_delivery
        self.producer = Producer(conf)
        self.ticks_topic = kc.ticks_topic
        self.fair_topic = kc.fair_topic
        inputs = self.cfg.fair.inputs
        self.use_trades = inputs in ("trades", "both")
        self.use_quotes = inputs in ("quotes", "both")
        # instrument -> provider -> last price
        self.last: dict[str, dict[str, float]] = {}

    def connections(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(provider, url, instruments) per connection, mirroring the daemon's partitioning."""
        registry = build_registry(self.cfg)
        out = []
        for part in assign_subscriptions(self.cfg, registry, self.cfg.daemon.workers):
            for provider in part.providers():
                p = self.cfg.provider(provider)
                if not p.url:
                    raise ValueError(f"provider {provider}: the baseline needs a url")
                out.append(
                    (provider, p.url, tuple(s.instrument for s in part.of_provider(provider)))
                )
        return out

    def _on_delivery(self, err, _msg) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.errors += 1

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        p = self.producer
        while True:
            try:
                p.produce(topic, value, key)
                return
            except BufferError:
                self.stats.retries += 1
                p.poll(0.005)

    def _fair(self, sym: str, key: bytes, provider: str, px: float) -> None:
        by_provider = self.last.setdefault(sym, {})
        by_provider[provider] = px
        fair = statistics.median(by_provider.values())
        value = {
            "instrument": sym,
            "price": fair,
            "method": "median",
            "sources": len(by_provider),
            "ts": time.time_ns(),
        }
        self._produce(self.fair_topic, key, json.dumps(value).encode())
        self.stats.fair += 1

    async def _binance(self, provider: str, venue: str, url: str, instruments: tuple[str, ...]):
        st = self.stats
        produce, fair, poll = self._produce, self._fair, self.producer.poll
        ticks = self.ticks_topic
        streams = "/".join(stream_name(i, "trade") for i in instruments)
        # the wire symbol (BTCUSDT) -> our instrument (BTC-USDT)
        names = {i.replace("-", ""): i for i in instruments}
        full = f"{url.rstrip('/')}/stream?streams={streams}"
        async with connect(full, compression=None, max_size=1 << 24, ping_interval=None) as ws:
            st.connections += 1
            async for raw in ws:
                t_recv = time.time_ns()
                ev = json.loads(raw)["data"]
                st.frames += 1
                st.events += 1
                sym = names[ev["s"]]
                key = sym.encode()
                price = float(ev["p"])
                rec = {
                    "instrument": sym,
                    "provider": provider,
                    "venue": venue,
                    "sequence": ev["t"],
                    "ts_exchange": ev["T"] * 1_000_000,
                    "ts_provider": ev["E"] * 1_000_000,
                    "ts_receive": t_recv,
                    "kind": "trade",
                    "price": price,
                    "size": float(ev["q"]),
                    "side": "sell" if ev["m"] else "buy",
                }
                produce(ticks, key, json.dumps(rec).encode())
                st.records += 1
                if self.use_trades:
                    fair(sym, key, provider, price)
                poll(0)

    async def _connection(self, provider: str, venue: str, url: str, symbols: tuple[str, ...]):
        if self.cfg.provider(provider).kind == "binance":
            await self._binance(provider, venue, url, symbols)
            return
        st = self.stats
        produce, fair = self._produce, self._fair
        ticks = self.ticks_topic
        use_trades, use_quotes = self.use_trades, self.use_quotes
        poll = self.producer.poll
        async with connect(url, compression=None, max_size=1 << 24, ping_interval=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": 1, "symbols": list(symbols)}))
            async for raw in ws:
                t_recv = time.time_ns()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind != "batch":
                    if kind == "subscribed":
                        st.connections += 1
                    elif kind == "error":
                        st.parse_errors += 1
                    continue
                st.frames += 1
                for ev in msg["events"]:
                    st.events += 1
                    sym = ev["s"]
                    key = sym.encode()
                    common = {
                        "instrument": sym,
                        "provider": provider,
                        "venue": venue,
                        "sequence": ev["seq"],
                        "ts_exchange": ev["T"],
                        "ts_provider": ev["P"],
                        "ts_receive": t_recv,
                    }
                    if ev["e"] == "trade":
                        rec = dict(common, kind="trade", price=ev["p"], size=ev["q"])
                        rec["side"] = ev["side"]
                        produce(ticks, key, json.dumps(rec).encode())
                        st.records += 1
                        px = ev["p"] if use_trades else None
                    else:
                        bid = dict(common, kind="bid", price=ev["bp"], size=ev["bq"], side="")
                        ask = dict(common, kind="ask", price=ev["ap"], size=ev["aq"], side="")
                        produce(ticks, key, json.dumps(bid).encode())
                        produce(ticks, key, json.dumps(ask).encode())
                        st.records += 2
                        px = (ev["bp"] + ev["ap"]) / 2 if use_quotes else None
                    if px is not None:
                        fair(sym, key, provider, px)
                poll(0)

    async def run(self, stop: asyncio.Event, status_interval: float = 0.0) -> BaselineStats:
        """Run until ``stop`` is set (or every connection ended), then flush the producer."""
        tasks = [
            asyncio.create_task(self._connection(p, self.cfg.provider(p).venue, url, syms))
            for p, url, syms in self.connections()
        ]
        stopper = asyncio.create_task(stop.wait())
        reporter = (
            asyncio.create_task(self._report(status_interval)) if status_interval > 0 else None
        )
        try:
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        finally:
            for t in (*tasks, stopper):
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            self.stats.queue = self.producer.flush(self.cfg.kafka.flush_timeout)
            if status_interval > 0:
                self._print_status(final=True)
        return self.stats

    async def _report(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.producer.poll(0)
            self._print_status()

    def _print_status(self, final: bool = False) -> None:
        self.stats.queue = len(self.producer)
        line = self.stats.as_dict()
        line["final"] = final
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


async def _main_async(cfg: Config, status_interval: float) -> BaselineStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await Baseline(cfg).run(stop, status_interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.baseline", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", "-c", required=True, help="fairfeed TOML (providers with url)")
    ap.add_argument("--status-interval", type=float, default=0.0, help="seconds; 0 = quiet")
    a = ap.parse_args(argv)
    cfg = config_mod.load(a.config)
    if not cfg.kafka.bootstrap:
        print("bench.baseline: kafka.bootstrap must be set", file=sys.stderr)
        return 2
    stats = asyncio.run(_main_async(cfg, a.status_interval))
    if a.status_interval <= 0:
        print(json.dumps(stats.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
