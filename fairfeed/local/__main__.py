"""Run a simulator server by hand.

python -m fairfeed.local --port 9001 --prices BTC-USD=64000 ETH-USD=3000
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.simulator import SimulatorServer, serve_forever


def _price(text: str) -> tuple[str, float]:
    sym, sep, px = text.partition("=")
    try:
        if not sep or not sym:
            raise ValueError
        return sym, float(px)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SYMBOL=PRICE, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    d = SimulatorConfig()
    ap = argparse.ArgumentParser(prog="python -m fairfeed.local")
    ap.add_argument("--name", default="simulator")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--prices", nargs="+", type=_price, required=True, metavar="SYM=PRICE")
    ap.add_argument("--rate", type=float, default=d.rate, help="events/s, 0 = max")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--quote-ratio", type=float, default=d.quote_ratio)
    ap.add_argument("--price-offset-bps", type=float, default=d.price_offset_bps)
    ap.add_argument("--volatility-bps", type=float, default=d.volatility_bps)
    ap.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval)
    ap.add_argument("--max-events", type=int, default=d.max_events)
    ap.add_argument("--seed", type=int, default=d.seed)
    a = ap.parse_args(argv)
    cfg = SimulatorConfig(
        prices=dict(a.prices),
        rate=a.rate,
        batch=a.batch,
        quote_ratio=a.quote_ratio,
        price_offset_bps=a.price_offset_bps,
        volatility_bps=a.volatility_bps,
        heartbeat_interval=a.heartbeat_interval,
        max_events=a.max_events,
        seed=a.seed,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = SimulatorServer(a.name, cfg, host=a.host, port=a.port)
    ready = lambda servers: print(f"serving {servers[0].url}", flush=True)  # noqa: E731
    asyncio.run(serve_forever([server], ready, handle_signals=True))


if __name__ == "__main__":
    main()
