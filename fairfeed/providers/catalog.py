"""Provider kinds: the adapter that speaks each, and the local server that can stand in for it.

Imports are lazy: a worker loads only the protocols it uses.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from fairfeed.daemon.config import Config, ProviderConfig
from fairfeed.providers.base import Adapter

LOCAL_API_KEY = "fairfeed-local-key"  # what served providers accept when no key is configured


class LocalServer(Protocol):
    async def start(self) -> Any: ...
    async def stop(self) -> None: ...


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
    raise KeyError(f"no adapter for provider kind {kind!r}")


def api_key(p: ProviderConfig) -> str:
    """The key a provider's adapter will send: from ``api_key_env``, else the local key."""
    return os.environ.get(p.api_key_env, "") if p.api_key_env else ""


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
        from fairfeed.providers.replay.server import ReplayServer

        r = p.replay
        return ReplayServer(
            r.capture,
            speed=r.speed,
            keep_open=r.keep_open,
            conn=r.connection or None,
            host=host,
            port=port,
        )
    s = p.serve
    if s is None:
        raise ValueError(f"provider {p.name!r} has no [providers.serve] or [providers.replay]")
    key = api_key(p) or LOCAL_API_KEY
    if p.kind == "simulator":
        from fairfeed.providers.simulator.server import SimulatorServer

        return SimulatorServer(p.name, s, host=host, port=port)
    if p.kind == "coinapi":
        from fairfeed.providers.coinapi.server import CoinApiServer

        return CoinApiServer(p.name, s, api_key=key, host=host, port=port)
    if p.kind == "binance":
        from fairfeed.providers.binance.server import BinanceServer

        return BinanceServer(p.name, s, host, port)
    if p.kind == "kraken":
        from fairfeed.providers.kraken.server import KrakenServer

        return KrakenServer(p.name, s, host, port)
    if p.kind == "coinbase":
        from fairfeed.providers.coinbase.server import CoinbaseServer

        return CoinbaseServer(p.name, s, host, port, feed=p.feed or "exchange")
    if p.kind == "kaiko":
        from fairfeed.providers.kaiko.server import KaikoServer

        venues = tuple(
            dict.fromkeys(v for pn, v, _i, _c in cfg.subscription_keys() if pn == p.name)
        )
        return KaikoServer(s, api_key=key, venues=venues or (p.venue,), host=host, port=port)
    raise KeyError(f"no local server for provider kind {p.kind!r}")
