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
future ``BTC-USD-250328``                   ``future``           ``btc-usd-250328``
option ``BTC-USD-250328-60000-C``           ``option``           ``btc-usd-250328-60000-c``
==============================  ==========  ===================  ============

Spot and perpetual codes follow from the canonical name by rule (lower case, ``-PERP`` dropped).
Kaiko's dated-future and option codes differ by exchange; the rule above (lower case) is only a
default and :class:`KaikoSymbols` takes explicit overrides for any instrument
(``overrides={("BINANCE", "future", "BTC-USD-250328"): "btc-usd-250328"}``). Check codes
against Kaiko's reference-data instruments endpoint before subscribing to derivatives.

Amount units: Kaiko's ``amount`` is the exchange's own quantity. For spot and linear
(USDT-margined) contracts that is the base currency — what our records carry. Inverse contracts
quote it in the quote currency or in contracts; :class:`KaikoSymbols` takes ``amount_units``
per instrument (``"base"``, ``"quote"`` → size = amount / price, or a float contract size
→ size = amount × contract size) so records always carry base-currency sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    """Kaiko code of a canonical instrument (``"BTC-USDT-PERP"`` → ``"btc-usdt"``)."""
    name = instrument
    if data_class == "perpetual" and name.upper().endswith(PERP_SUFFIX):
        name = name[: -len(PERP_SUFFIX)]
    return name.lower()


def canonical_instrument(code: str, kaiko_class: str) -> str:
    """Canonical name of a Kaiko code (``"btc-usdt"``, perpetual → ``"BTC-USDT-PERP"``)."""
    name = code.upper()
    if kaiko_class == "perpetual-future":
        name += PERP_SUFFIX
    return name


def guess_data_class(instrument: str) -> str:
    """The data class a canonical name implies: ``-PERP`` → perpetual, else spot."""
    return "perpetual" if instrument.upper().endswith(PERP_SUFFIX) else "spot"


@dataclass(frozen=True)
class KaikoSymbols:
    """The mapping with per-deployment overrides.

    ``overrides`` maps ``(venue, data_class, instrument)`` to a Kaiko code; ``amount_units`` maps
    the same key to ``"base"``, ``"quote"`` or a contract size in base currency.
    """

    overrides: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    amount_units: Mapping[tuple[str, str, str], str | float] = field(default_factory=dict)

    def criteria(self, venue: str, data_class: str, instrument: str) -> tuple[str, str, str]:
        """``(exchange, instrument class, code)`` of one canonical subscription."""
        code = self.overrides.get((venue, data_class, instrument))
        if code is None:
            code = instrument_code(instrument, data_class)
        return exchange_code(venue), instrument_class(data_class), code

    def amount_unit(self, venue: str, data_class: str, instrument: str) -> tuple[int, float]:
        """``(unit code, contract size)`` of one canonical subscription."""
        unit = self.amount_units.get((venue, data_class, instrument), "base")
        if unit == "base":
            return UNIT_BASE, 1.0
        if unit == "quote":
            return UNIT_QUOTE, 1.0
        if isinstance(unit, int | float) and not isinstance(unit, bool) and unit > 0:
            return UNIT_CONTRACTS, float(unit)
        raise ValueError(f"amount unit must be 'base', 'quote' or a contract size > 0: {unit!r}")
