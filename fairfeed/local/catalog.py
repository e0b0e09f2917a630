"""The local server that can stand in for each provider kind (embedded default, tests)."""

from __future__ import annotations

import os
from typing import Any, Protocol

from fairfeed.core.config import Config, ProviderConfig
from fairfeed.providers.base import api_key

LOCAL_API_KEY = "fairfeed-local-key"  # what served providers accept when no key is configured


class LocalServer(Protocol):
    async def start(self) -> Any: ...
    async def stop(self) -> None: ...


def prepare_local_keys(cfg: Config) -> None:
    """Give served providers a key when none is set, so the adapter and server agree.

    Called in the supervisor before forking; children inherit the environment.
    """
    for p in cfg.providers:
        if (p.serve or p.replay) and p.api_key_env and not os.environ.get(p.api_key_env):
            os.environ[p.api_key_env] = LOCAL_API_KEY


def local_url(p: ProviderConfig, port: int) -> str:
    """The endpoint of a served provider's local server on 127.0.0.1."""
    if p.kind == "kaiko":
        return f"grpc://127.0.0.1:{port}"
    return f"ws://127.0.0.1:{port}"


def local_server(cfg: Config, p: ProviderConfig, port: int) -> LocalServer:
    """The local server for provider ``p`` (it has ``serve`` or ``replay``) on ``port``."""
    host = "127.0.0.1"
    if p.replay is not None:
        from fairfeed.local.replay import ReplayServer
        from fairfeed.local.replayproto import protocol_for

        r = p.replay
        return ReplayServer(
            r.capture,
            speed=r.speed,
            keep_open=r.keep_open,
            conn=r.connection or None,
            host=host,
            port=port,
            protocol=protocol_for(p.kind, p.feed),
            expect=wire_symbols(cfg, p),
        )
    s = p.serve
    if s is None:
        raise ValueError(f"provider {p.name!r} has no [providers.serve] or [providers.replay]")
    key = api_key(p) or LOCAL_API_KEY
    if p.kind == "simulator":
        from fairfeed.local.simulator import SimulatorServer

        return SimulatorServer(p.name, s, host=host, port=port)
    if p.kind == "coinapi":
        from fairfeed.local.coinapi import CoinApiServer

        return CoinApiServer(p.name, s, api_key=key, host=host, port=port)
    if p.kind == "binance":
        from fairfeed.local.binance import BinanceServer

        market = getattr(p.options, "market", "spot")
        return BinanceServer(p.name, s, market=market, host=host, port=port)
    if p.kind == "kraken":
        from fairfeed.local.kraken import KrakenServer

        return KrakenServer(p.name, s, host=host, port=port)
    if p.kind == "kraken_futures":
        from fairfeed.local.kraken_futures import KrakenFuturesServer

        o = p.options
        return KrakenFuturesServer(
            p.name,
            s,
            products=o.products,
            contracts=o.contracts,
            host=host,
            port=port,  # type: ignore[attr-defined]
        )
    if p.kind == "coinbase":
        from fairfeed.local.coinbase import CoinbaseServer

        return CoinbaseServer(p.name, s, host=host, port=port, feed=p.feed or "exchange")
    if p.kind == "kaiko":
        from fairfeed.local.kaiko import KaikoServer
        from fairfeed.providers.kaiko.symbols import KaikoSymbols

        venues = tuple(dict.fromkeys(s.venue for s in cfg.streams() if s.provider == p.name))
        # the adapter's names (its `codes` option): what it subscribes is what is served
        symbols = KaikoSymbols.from_options(p.options)  # type: ignore[arg-type]
        return KaikoServer(
            s, api_key=key, venues=venues or (p.venue,), symbols=symbols, host=host, port=port
        )
    raise KeyError(f"no local server for provider kind {p.kind!r}")


def wire_symbols(cfg: Config, p: ProviderConfig) -> set[str]:
    """The venue's names of provider ``p``'s configured subscriptions (what a replay of its
    capture waits for before its clock starts)."""
    streams = [s for s in cfg.streams() if s.provider == p.name]
    if p.kind == "coinbase":
        from fairfeed.providers.coinbase.symbols import to_product_id

        return {to_product_id(s.instrument) for s in streams}
    if p.kind == "binance":
        from fairfeed.providers.binance.symbols import to_symbol

        market = getattr(p.options, "market", "spot")
        return {to_symbol(s.instrument, market) for s in streams}
    if p.kind == "kraken":
        from fairfeed.providers.kraken.symbols import to_symbol as kraken_symbol

        return {kraken_symbol(s.instrument) for s in streams}
    if p.kind == "kraken_futures":
        from fairfeed.providers.kraken_futures.symbols import product_id

        products = p.options.products  # type: ignore[attr-defined]
        return {product_id(s.instrument, products) for s in streams}
    if p.kind == "coinapi":
        from fairfeed.providers.coinapi.symbols import to_symbol_id

        return {to_symbol_id(s.venue, s.instrument, s.data_class) for s in streams}
    return set()
