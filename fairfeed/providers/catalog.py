"""Provider kinds: the adapter that speaks each.

Imports are lazy: a worker loads only the protocols it uses. The local servers that can stand
in for each kind are in ``fairfeed.local.catalog``.
"""

from __future__ import annotations

from fairfeed.providers.base import Adapter


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class for a provider ``kind``."""
    if kind == "simulator":
        from fairfeed.providers.simulator.adapter import SimulatorAdapter

        return SimulatorAdapter
    if kind == "coinapi":
        from fairfeed.providers.coinapi.adapter import CoinApiAdapter

        return CoinApiAdapter
    if kind == "binance":
        from fairfeed.providers.binance.adapter import BinanceAdapter

        return BinanceAdapter
    if kind == "kraken":
        from fairfeed.providers.kraken.adapter import KrakenAdapter

        return KrakenAdapter
    if kind == "kaiko":
        from fairfeed.providers.kaiko.adapter import KaikoAdapter

        return KaikoAdapter
    if kind == "coinbase":
        from fairfeed.providers.coinbase.adapter import CoinbaseAdapter

        return CoinbaseAdapter
    if kind == "kraken_futures":
        from fairfeed.providers.kraken_futures.adapter import KrakenFuturesAdapter

        return KrakenFuturesAdapter
    raise KeyError(f"no adapter for provider kind {kind!r}")
