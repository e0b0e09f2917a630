"""Canonical names ↔ Kaiko Stream instrument criteria (exchange code, instrument class, code).

Kaiko names an instrument by three lower-case strings, the same in requests
(``InstrumentCriteria``) and responses (``exchange``, ``class``, ``code``):

==============================  ==========  ===================  ============
canonical (ours)                exchange    instrument class     code
==============================  ==========  ===================  ============
venue ``COINBASE``              ``cbse``
venue ``BINANCE``               ``binc``
venue ``KRAKEN``                ``krkn``
venue ``BITSTAMP``              ``stmp``
venue ``BITFINEX``              ``bfnx``
venue ``GEMINI``                ``gmni``
venue ``OKX``                   ``okex``
spot ``BTC-USD``                            ``spot``             ``btc-usd``
perpetual ``BTC-USDT-PERP``                 ``perpetual-future`` ``btc-usdt``
future ``BTC-USD-250328``                   ``future``           ``btcusd250328``
option ``BTC-USD-250328-60000-C``           ``option``           from ``codes`` only
==============================  ==========  ===================  ============

From Kaiko's reference data (``reference-data-api.kaiko.io/v1/instruments``, and the
derivatives reference): spot codes are always ``base-quote``; perpetuals are ``base-quote`` too
(``binc`` ``btc-usdc``); dated futures are base, quote and expiry ``YYMMDD`` run together
(``okex`` ``btcusd220624``, patterns like ``btc*220624``), so a canonical
``BASE-QUOTE-YYMMDD`` maps by rule. Option codes follow each exchange's own naming (Deribit:
``btc10apr204750c``) and older futures have aliases (``btc_usd__this_week``): no rule covers
them, so such an instrument needs an explicit code, the ``codes`` option
(``"VENUE:class:INSTRUMENT" = "code"``), checked at load (a Kaiko option or non-dated future
subscription without one stops the start). An entry in ``codes`` also overrides any rule.

Amount units: Kaiko's ``amount`` is the exchange's own quantity. For spot and linear
(USDT-margined) contracts that is the base currency — what our records carry. Contract-sized and
inverse instruments count contracts or quote currency; ``amount_units`` per instrument says
what one unit is (:func:`fairfeed.core.options.amount_unit`): ``"base"``, ``"quote"`` (size =
amount / price), a contract size in base currency (``0.01`` → size = amount × 0.01), or
``"N quote"`` for contracts worth N quote units (a 100 USD inverse contract: ``"100 quote"`` →
size = amount × 100 / price), so records always carry base-currency sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fairfeed.core.options import KaikoOptions, kaiko_code_rule_applies, split_key
from fairfeed.core.options import amount_unit as parse_amount_unit

VENUE_TO_EXCHANGE: dict[str, str] = {
    "COINBASE": "cbse",
    "BINANCE": "binc",
    "KRAKEN": "krkn",
    "BITSTAMP": "stmp",
    "BITFINEX": "bfnx",
    "GEMINI": "gmni",
    "OKX": "okex",
}
EXCHANGE_TO_VENUE: dict[str, str] = {v: k for k, v in VENUE_TO_EXCHANGE.items()}

CLASS_TO_KAIKO: dict[str, str] = {
    "spot": "spot",
    "perpetual": "perpetual-future",
    "future": "future",
    "option": "option",
}
KAIKO_TO_CLASS: dict[str, str] = {v: k for k, v in CLASS_TO_KAIKO.items()}

PERP_SUFFIX = "-PERP"

# Amount-unit codes used by the parser (see module docstring).
UNIT_BASE = 0
UNIT_QUOTE = 1
UNIT_CONTRACTS = 2


def exchange_code(venue: str) -> str:
    """Kaiko exchange code of a canonical venue (``"COINBASE"`` → ``"cbse"``)."""
    try:
        return VENUE_TO_EXCHANGE[venue.upper()]
    except KeyError:
        raise KeyError(
            f"no Kaiko exchange code for venue {venue!r} (known: {', '.join(VENUE_TO_EXCHANGE)})"
        ) from None


def venue_name(exchange: str) -> str:
    """Canonical venue of a Kaiko exchange code (``"cbse"`` → ``"COINBASE"``)."""
    return EXCHANGE_TO_VENUE[exchange]


def instrument_class(data_class: str) -> str:
    """Kaiko instrument class of a data class (``"perpetual"`` → ``"perpetual-future"``)."""
    return CLASS_TO_KAIKO[data_class]


def data_class_of(kaiko_class: str) -> str:
    """Canonical data class of a Kaiko instrument class."""
    return KAIKO_TO_CLASS[kaiko_class]


def instrument_code(instrument: str, data_class: str) -> str:
    """Kaiko code of a canonical instrument by rule (``"BTC-USDT-PERP"`` → ``"btc-usdt"``,
    ``"BTC-USD-250328"`` future → ``"btcusd250328"``); ValueError where no rule applies
    (options, futures not named ``BASE-QUOTE-YYMMDD``)."""
    if not kaiko_code_rule_applies(data_class, instrument):
        raise ValueError(
            f"no Kaiko code rule for the {data_class} {instrument!r}: give it a code in the "
            "provider's `codes` option (Kaiko's reference data names it)"
        )
    name = instrument
    if data_class == "perpetual" and name.upper().endswith(PERP_SUFFIX):
        name = name[: -len(PERP_SUFFIX)]
    if data_class == "future":
        name = name.replace("-", "")
    return name.lower()


def canonical_instrument(code: str, kaiko_class: str) -> str:
    """Canonical name of a Kaiko code (``"btc-usdt"``, perpetual → ``"BTC-USDT-PERP"``)."""
    name = code.upper()
    if kaiko_class == "perpetual-future":
        name += PERP_SUFFIX
    return name


def guess_data_class(instrument: str) -> str:
    """The data class a canonical name implies: ``-PERP`` → perpetual, ``BASE-QUOTE-YYMMDD`` →
    future, else spot."""
    if instrument.upper().endswith(PERP_SUFFIX):
        return "perpetual"
    return "future" if kaiko_code_rule_applies("future", instrument) else "spot"


@dataclass(frozen=True)
class KaikoSymbols:
    """The mapping with per-deployment overrides.

    ``overrides`` maps ``(venue, data_class, instrument)`` to a Kaiko code; ``amount_units`` maps
    the same key to an amount unit (:func:`fairfeed.core.options.amount_unit`).
    """

    overrides: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    amount_units: Mapping[tuple[str, str, str], str | float] = field(default_factory=dict)

    def criteria(self, venue: str, data_class: str, instrument: str) -> tuple[str, str, str]:
        """``(exchange, instrument class, code)`` of one canonical subscription."""
        code = self.overrides.get((venue, data_class, instrument))
        if code is None:
            code = instrument_code(instrument, data_class)
        return exchange_code(venue), instrument_class(data_class), code

    @classmethod
    def from_options(cls, options: KaikoOptions) -> KaikoSymbols:
        """The tables of a provider's ``codes`` and ``amount_units`` options."""
        return cls(
            overrides={split_key(k): v for k, v in options.codes.items()},
            amount_units={split_key(k): v for k, v in options.amount_units.items()},
        )

    def amount_unit(self, venue: str, data_class: str, instrument: str) -> tuple[int, float]:
        """``(unit code, contract size)`` of one canonical subscription."""
        unit, size = parse_amount_unit(
            self.amount_units.get((venue, data_class, instrument), "base")
        )
        if unit == "quote":
            return UNIT_QUOTE, size
        return (UNIT_BASE, 1.0) if size == 1.0 else (UNIT_CONTRACTS, size)
