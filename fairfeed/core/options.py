"""Adapter options: one frozen dataclass per provider kind (`[providers.options]`).

They live in core, not in the venue packages, because the configuration validates them at load
(``fairfeed check-config`` rejects a bad option) and core imports nothing above it. Every option
is documented in docs/configuration.md and on its provider's page. An adapter reads its options
from ``ctx.provider.options`` and takes no other settings.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from fairfeed.core.records import CLASS_CODES


@dataclass(frozen=True)
class AdapterOptions:
    """What every adapter accepts; seconds unless said otherwise."""

    backoff_base: float = 0.25  # first reconnect delay (capped, jittered, doubling per failure)
    backoff_cap: float = 30.0  # the longest reconnect delay
    subscribe_timeout: float = 10.0  # a subscription unanswered this long: reconnect
    rate_limit_pause: float = 1.0  # least wait after a rate-limit refusal (the backoff still grows)


@dataclass(frozen=True)
class SimulatorOptions(AdapterOptions):
    subscribe_timeout: float = 5.0


@dataclass(frozen=True)
class BinanceOptions(AdapterOptions):
    url_streams: bool = False  # streams in the URL (`/stream?streams=…`) instead of SUBSCRIBE
    market: str = "spot"  # "spot" (stream.binance.com) or "usdm" (USD-M futures, fstream)
    # USD-M: also stream every instrument's markPrice@1s (mark, index, funding) and forceOrder
    # (liquidations), published on kafka.derivatives_topic
    derivatives: bool = False


@dataclass(frozen=True)
class KrakenOptions(AdapterOptions):
    ping_interval: float = 10.0  # application ping per connection; 0 = none


@dataclass(frozen=True)
class CoinbaseOptions(AdapterOptions):
    snapshot_trades: bool = False  # Advanced Trade: the recent trades sent on subscribe as TRADEs


@dataclass(frozen=True)
class CoinApiOptions(AdapterOptions):
    error_retry_after: float = 60.0  # wait after an `error` message (bad key, quota, rate limit)
    error_retry_cap: float = 900.0  # ... doubling per consecutive error up to this
    check_gaps: bool = True  # number messages per (type, symbol id) and report gaps


@dataclass(frozen=True)
class KaikoOptions(AdapterOptions):
    rate_limit_pause: float = 5.0
    trades: bool = True  # subscribe the trades service
    quotes: bool = True  # subscribe the top-of-book market-update service
    # "VENUE:class:INSTRUMENT" -> Kaiko code, where the rule gives none or the wrong one
    # (options always; futures not named BASE-QUOTE-YYMMDD): docs/providers/kaiko.md
    codes: dict[str, str] = field(default_factory=dict)
    # "VENUE:class:INSTRUMENT" -> what one unit of Kaiko's `amount` is: "base", "quote", a
    # contract size in base currency (0.01), or "N base" / "N quote" (a 100 USD contract:
    # "100 quote"); records carry base-currency sizes
    amount_units: dict[str, str | float] = field(default_factory=dict)
    buffer_records: int = 8192  # records the reader threads may hold for the event loop
    # venues whose trade ids Kaiko passes on contiguous per instrument (e.g. "COINBASE"): a jump
    # is a gap record (what a restarted call missed), a repeat is dropped; off by default
    gap_venues: tuple[str, ...] = ()
    # HTTP/2 keepalive of the channel: a ping after this long without a read, ...
    keepalive_time: float = 20.0
    keepalive_timeout: float = 10.0  # ... unanswered this long: the channel is dead
    batch_delay: float = 0.0005  # let records gather this long before one emit; 0 = at once


OPTIONS: dict[str, type[AdapterOptions]] = {
    "simulator": SimulatorOptions,
    "binance": BinanceOptions,
    "kraken": KrakenOptions,
    "coinbase": CoinbaseOptions,
    "coinapi": CoinApiOptions,
    "kaiko": KaikoOptions,
}


def split_key(key: str) -> tuple[str, str, str]:
    """``"VENUE:class:INSTRUMENT"`` → ``(venue, data class, instrument)``; ValueError if not."""
    parts = key.split(":")
    if len(parts) != 3 or not all(parts) or parts[1] not in CLASS_CODES:
        raise ValueError(
            f"{key!r}: expected VENUE:class:INSTRUMENT with a class in {', '.join(CLASS_CODES)}"
        )
    return parts[0], parts[1], parts[2]


# Kaiko codes are lower case; a comma or `*` would select other instruments (lists, wildcards)
_KAIKO_CODE = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
_DATED_FUTURE = re.compile(r"[A-Za-z0-9]+-[A-Za-z0-9]+-\d{6}")  # BTC-USD-250328


def kaiko_code_rule_applies(data_class: str, instrument: str) -> bool:
    """Whether Kaiko's code of ``instrument`` follows from its name (see
    ``fairfeed.providers.kaiko.symbols``): spot and perpetuals always, futures named
    ``BASE-QUOTE-YYMMDD``; options never (their codes differ by exchange): those need ``codes``.
    """
    if data_class == "option":
        return False
    return data_class != "future" or _DATED_FUTURE.fullmatch(instrument) is not None


def amount_unit(value: str | float) -> tuple[str, float]:
    """``(unit, contract size)`` of an ``amount_units`` value: ``"base"`` / ``"quote"`` (size
    1), a number (contracts of that many base units), ``"N base"`` / ``"N quote"``; ValueError
    if it is none of these."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        unit, size = "base", float(value)
    elif isinstance(value, str):
        parts = value.split()
        unit = parts[-1] if parts else ""
        try:
            size = float(parts[0]) if len(parts) == 2 else 1.0 if len(parts) == 1 else 0.0
        except ValueError:
            size = 0.0
    else:
        unit, size = "", 0.0
    if unit not in ("base", "quote") or not 0 < size < float("inf"):
        raise ValueError(
            f"must be 'base', 'quote', a contract size > 0 or 'N base' / 'N quote', not {value!r}"
        )
    return unit, size


def check(options: AdapterOptions) -> list[tuple[str, str]]:
    """Rules a type cannot express: ``[(option, problem), ...]``, empty when valid."""
    bad = [
        (f.name, "must be >= 0")
        for f in dataclasses.fields(options)
        if isinstance(v := getattr(options, f.name), int | float)
        and not isinstance(v, bool)
        and v < 0
    ]
    if options.backoff_base <= 0 or options.backoff_cap < options.backoff_base:
        bad.append(("backoff_base", "must be > 0 and at most backoff_cap"))
    if options.subscribe_timeout <= 0:
        bad.append(("subscribe_timeout", "must be > 0"))
    if isinstance(options, CoinApiOptions) and options.error_retry_cap < options.error_retry_after:
        bad.append(("error_retry_cap", "must be >= error_retry_after"))
    if isinstance(options, BinanceOptions) and options.market not in ("spot", "usdm"):
        bad.append(("market", f"must be 'spot' or 'usdm', not {options.market!r}"))
    if isinstance(options, BinanceOptions) and options.derivatives and options.market != "usdm":
        bad.append(("derivatives", "needs market = 'usdm' (spot has no derivatives streams)"))
    if isinstance(options, KaikoOptions):
        if options.buffer_records < 1:
            bad.append(("buffer_records", "must be >= 1"))
        for name in ("keepalive_time", "keepalive_timeout"):
            if getattr(options, name) < 0.001:
                bad.append((name, "must be >= 0.001 (seconds)"))
        for name in ("codes", "amount_units"):
            for key in getattr(options, name):
                try:
                    split_key(key)
                except ValueError as exc:
                    bad.append((f"{name}.{key}", str(exc)))
        for key, unit in options.amount_units.items():
            try:
                amount_unit(unit)
            except ValueError as exc:
                bad.append((f"amount_units.{key}", str(exc)))
        for key, code in options.codes.items():
            if not _KAIKO_CODE.fullmatch(code):
                bad.append((f"codes.{key}", f"{code!r} is not a Kaiko code (lower case letters, "
                            "digits, '_', '-', '.'; no list or wildcard)"))  # fmt: skip
    return bad
