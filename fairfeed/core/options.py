"""Adapter options: one frozen dataclass per provider kind (`[providers.options]`).

They live in core, not in the venue packages, because the configuration validates them at load
(``fairfeed check-config`` rejects a bad option) and core imports nothing above it. Every option
is documented in docs/configuration.md and on its provider's page. An adapter reads its options
from ``ctx.provider.options`` and takes no other settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from fairfeed.core.ranges import DAY, HOUR, Range
from fairfeed.core.records import CLASS_CODES


@dataclass(frozen=True)
class AdapterOptions:
    """What every adapter accepts; seconds unless said otherwise."""

    # What the kind accepts as the provider's `feed` ("" = its default) and `url` scheme.
    FEEDS: ClassVar[tuple[str, ...]] = ("",)
    URL_SCHEMES: ClassVar[tuple[str, ...]] = ("ws", "wss")

    backoff_base: float = 0.25  # first reconnect delay (capped, jittered, doubling per failure)
    backoff_cap: float = 30.0  # the longest reconnect delay
    subscribe_timeout: float = 10.0  # a subscription unanswered this long: reconnect
    rate_limit_pause: float = 1.0  # least wait after a rate-limit refusal (the backoff still grows)

    def data_classes(self) -> tuple[str, ...]:
        """The data classes this kind (with these options) can subscribe."""
        return tuple(CLASS_CODES)

    def market_data(self) -> bool:
        """Whether it streams trades or quotes; if not, its derivatives values are what the
        anomaly detectors judge its subscriptions by (no data, rate, latency)."""
        return True


@dataclass(frozen=True)
class SimulatorOptions(AdapterOptions):
    subscribe_timeout: float = 5.0


@dataclass(frozen=True)
class BinanceOptions(AdapterOptions):
    FEEDS: ClassVar[tuple[str, ...]] = ("", "trade", "aggTrade")

    url_streams: bool = False  # streams in the URL (`/stream?streams=…`) instead of SUBSCRIBE
    market: str = "spot"  # "spot" (stream.binance.com) or "usdm" (USD-M futures, fstream)
    # USD-M: also stream every instrument's markPrice@1s (mark, index, funding) and forceOrder
    # (liquidations), published on kafka.derivatives_topic
    derivatives: bool = False

    def data_classes(self) -> tuple[str, ...]:
        return ("perpetual", "future") if self.market == "usdm" else ("spot",)


@dataclass(frozen=True)
class KrakenOptions(AdapterOptions):
    ping_interval: float = 10.0  # application ping per connection; 0 = none

    def data_classes(self) -> tuple[str, ...]:
        return ("spot",)  # Kraken spot v2; futures are another service


@dataclass(frozen=True)
class CoinbaseOptions(AdapterOptions):
    FEEDS: ClassVar[tuple[str, ...]] = ("", "exchange", "advanced")

    snapshot_trades: bool = False  # Advanced Trade: the recent trades sent on subscribe as TRADEs

    def data_classes(self) -> tuple[str, ...]:
        return ("spot",)


@dataclass(frozen=True)
class CoinApiOptions(AdapterOptions):
    error_retry_after: float = 60.0  # wait after an `error` message (bad key, quota, rate limit)
    error_retry_cap: float = 900.0  # ... doubling per consecutive error up to this
    check_gaps: bool = True  # number messages per (type, symbol id) and report gaps


@dataclass(frozen=True)
class KaikoOptions(AdapterOptions):
    URL_SCHEMES: ClassVar[tuple[str, ...]] = ("grpc", "grpcs", "")  # "" = host:port, `tls` decides

    rate_limit_pause: float = 5.0
    trades: bool = True  # subscribe the trades service
    quotes: bool = True  # subscribe the top-of-book market-update service
    # perpetual and future subscriptions also stream Kaiko's derivatives instrument metrics
    # (mark, index, funding, open interest), published on kafka.derivatives_topic
    derivatives: bool = False
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

    def data_classes(self) -> tuple[str, ...]:
        if self.trades or self.quotes:
            return tuple(CLASS_CODES)
        return KAIKO_DERIVATIVE_CLASSES  # derivatives metrics only

    def market_data(self) -> bool:
        return self.trades or self.quotes


# The data classes Kaiko's derivatives instrument metrics stream is subscribed for
KAIKO_DERIVATIVE_CLASSES = ("perpetual", "future")


@dataclass(frozen=True)
class KrakenFuturesOptions(AdapterOptions):
    ping_interval: float = 30.0  # WebSocket ping per connection (Kraken: at least every 60 s)
    # canonical instrument -> Kraken Futures product id, where the rule (BASE-QUOTE-PERP ->
    # PF_BASEQUOTE, BASE-QUOTE-YYMMDD -> FF_BASEQUOTE_YYMMDD, BTC as XBT) gives the wrong one:
    # inverse contracts (PI_ / FI_) and other names; docs/providers/kraken_futures.md
    products: dict[str, str] = field(default_factory=dict)
    # product id -> what one contract is (an `amount_unit`: "1 base", "1 quote", 0.001), from
    # Kraken's instrument list (/derivatives/api/v3/instruments: type and contractSize);
    # default by family: PF_ / FF_ one base unit, PI_ / FI_ one quote unit (1 USD)
    contracts: dict[str, str | float] = field(default_factory=dict)

    def data_classes(self) -> tuple[str, ...]:
        return ("perpetual", "future")  # PF_ / PI_ perpetuals, FF_ / FI_ dated futures


OPTIONS: dict[str, type[AdapterOptions]] = {
    "simulator": SimulatorOptions,
    "binance": BinanceOptions,
    "kraken": KrakenOptions,
    "coinbase": CoinbaseOptions,
    "coinapi": CoinApiOptions,
    "kaiko": KaikoOptions,
    "kraken_futures": KrakenFuturesOptions,
}


# The allowed range of every numeric option (see fairfeed/core/ranges.py); merged into the
# configuration's table, so options are checked at load like every other setting.
RANGES: dict[type, dict[str, Range]] = {
    AdapterOptions: {
        "backoff_base": Range(0, HOUR, lo_open=True),
        "backoff_cap": Range(0, DAY, lo_open=True),
        "subscribe_timeout": Range(0, HOUR, lo_open=True),
        "rate_limit_pause": Range(0, HOUR),
    },
    KrakenOptions: {"ping_interval": Range(0, HOUR)},
    KrakenFuturesOptions: {"ping_interval": Range(0, HOUR)},
    CoinApiOptions: {"error_retry_after": Range(0, DAY), "error_retry_cap": Range(0, DAY)},
    KaikoOptions: {
        "buffer_records": Range(1, 1 << 22),
        "keepalive_time": Range(0.001, HOUR),
        "keepalive_timeout": Range(0.001, HOUR),
        "batch_delay": Range(0, 0.1),
    },
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


# Kraken Futures products: PF_ / PI_ perpetuals (linear / inverse), FF_ / FI_ dated futures
_KF_PRODUCT = re.compile(r"(P[FI])_([A-Z0-9]+)|(F[FI])_([A-Z0-9]+)_(\d{6})")
_KF_NAME = re.compile(r"([A-Z0-9]+)-([A-Z0-9]+)-(PERP|\d{6})")
_KF_ASSETS = {"BTC": "XBT"}  # canonical asset -> Kraken's code


def kraken_futures_product(instrument: str, products: dict[str, str] | None = None) -> str:
    """Kraken Futures product id of a canonical instrument: ``products`` first, else the rule
    ``BTC-USD-PERP`` → ``PF_XBTUSD``, ``BTC-USD-250328`` → ``FF_XBTUSD_250328`` (linear);
    ValueError if neither gives a valid product id."""
    if products and instrument in products:
        pid = products[instrument].upper()
        kraken_futures_class(pid)
        return pid
    m = _KF_NAME.fullmatch(instrument)
    if m is None:
        raise ValueError(
            f"no Kraken Futures product for {instrument!r}: name it BASE-QUOTE-PERP or "
            "BASE-QUOTE-YYMMDD, or map it in the provider's `products` option"
        )
    base, quote, expiry = (_KF_ASSETS.get(g, g) for g in m.groups())
    return f"PF_{base}{quote}" if expiry == "PERP" else f"FF_{base}{quote}_{expiry}"


def kraken_futures_class(product: str) -> str:
    """``"perpetual"`` (PF_, PI_) or ``"future"`` (FF_, FI_); ValueError for another id."""
    m = _KF_PRODUCT.fullmatch(product.upper())
    if m is None:
        raise ValueError(
            f"{product!r} is not a Kraken Futures product id (PF_XBTUSD, PI_XBTUSD, "
            "FF_XBTUSD_YYMMDD, FI_XBTUSD_YYMMDD)"
        )
    return "perpetual" if m.group(1) else "future"


def kraken_futures_problem(
    instrument: str, data_class: str, products: dict[str, str] | None = None
) -> str | None:
    """Why ``instrument`` subscribed as ``data_class`` cannot be streamed from Kraken Futures
    (no product by rule or ``products``, or a product of another class), or None."""
    try:
        pid = kraken_futures_product(instrument, products)
    except ValueError as exc:
        return str(exc)
    if (cls := kraken_futures_class(pid)) != data_class:
        return f"{instrument!r} is Kraken Futures' {pid}, a {cls}, subscribed as {data_class}"
    return None


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
    bad = []
    if options.backoff_cap < options.backoff_base:
        bad.append(("backoff_base", "must be at most backoff_cap"))
    if isinstance(options, CoinApiOptions) and options.error_retry_cap < options.error_retry_after:
        bad.append(("error_retry_cap", "must be >= error_retry_after"))
    if isinstance(options, BinanceOptions) and options.market not in ("spot", "usdm"):
        bad.append(("market", f"must be 'spot' or 'usdm', not {options.market!r}"))
    if isinstance(options, KrakenFuturesOptions):
        for inst, pid in options.products.items():
            try:
                kraken_futures_class(pid)
            except ValueError as exc:
                bad.append((f"products.{inst}", str(exc)))
        for pid, spec in options.contracts.items():
            try:
                kraken_futures_class(pid)
                unit, _ = amount_unit(spec)
            except ValueError as exc:
                bad.append((f"contracts.{pid}", str(exc)))
                continue
            if (unit == "quote") != (pid.upper()[1] == "I"):  # PI_ / FI_: inverse
                bad.append((f"contracts.{pid}", "an inverse contract (PI_, FI_) is 'N quote', "
                            f"a linear one 'N base' or a number, not {spec!r}"))  # fmt: skip
    if isinstance(options, BinanceOptions) and options.derivatives and options.market != "usdm":
        bad.append(("derivatives", "needs market = 'usdm' (spot has no derivatives streams)"))
    if isinstance(options, KaikoOptions):
        if not (options.trades or options.quotes or options.derivatives):
            bad.append(("trades", "trades, quotes and derivatives are all off: nothing to stream"))
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
