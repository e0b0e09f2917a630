"""CoinAPI symbol ids ↔ canonical (venue, instrument, data class).

CoinAPI names a market ``EXCHANGE_TYPE_BASE_QUOTE[_EXTRA…]`` (metadata ``symbol_id``):

=====================================  ============  ==================  ==========
CoinAPI symbol id                      venue         instrument          class
=====================================  ============  ==================  ==========
``COINBASE_SPOT_BTC_USD``              ``COINBASE``  ``BTC-USD``         spot
``BINANCE_PERP_BTC_USDT``              ``BINANCE``   ``BTC-USDT-PERP``   perpetual
``DERIBIT_FTS_BTC_USD_240628``         ``DERIBIT``   ``BTC-USD-240628``  future
``DERIBIT_OPT_BTC_USD_240628_60000_C`` ``DERIBIT``   ``BTC-USD-240628-60000-C``  option
=====================================  ============  ==================  ==========

* venue = CoinAPI's exchange id, unchanged (CoinAPI lists some derivative venues under their own
  exchange id, e.g. ``BINANCEFTS`` for Binance USDⓈ-M futures: that is then the venue name);
* instrument = ``BASE-QUOTE`` plus ``-PERP`` for perpetuals, ``-YYMMDD`` for dated futures and
  ``-YYMMDD-STRIKE-C|P`` for options (the parts after BASE and QUOTE, joined with ``-``);
* class from the type token: ``SPOT`` → spot, ``PERP`` → perpetual, ``FTS`` → future,
  ``OPT`` → option. Other types (``IDX``, ``CREDIT``…) are not supported.

The reverse mapping (what we subscribe) also accepts a perpetual written without ``-PERP``
(``BTC-USDT`` with class perpetual), since the class alone says it is a perpetual.
"""

from __future__ import annotations

TYPE_TO_CLASS = {"SPOT": "spot", "PERP": "perpetual", "FTS": "future", "OPT": "option"}
CLASS_TO_TYPE = {v: k for k, v in TYPE_TO_CLASS.items()}


def _token(part: str, what: str, name: str) -> str:
    if not part or not part.isascii() or not part.replace(".", "").isalnum():
        raise ValueError(f"bad {what} {part!r} in {name!r}")
    return part.upper()


def from_symbol_id(symbol_id: str) -> tuple[str, str, str]:
    """``(venue, instrument, data class)`` of a CoinAPI symbol id; ValueError if unsupported."""
    parts = symbol_id.split("_")
    for i in range(1, len(parts)):
        if parts[i] in TYPE_TO_CLASS:
            break
    else:
        raise ValueError(f"not a SPOT, PERP, FTS or OPT CoinAPI symbol id: {symbol_id!r}")
    exchange = "_".join(parts[:i])
    kind = parts[i]
    rest = [_token(p, "symbol part", symbol_id) for p in parts[i + 1 :]]
    need = {"SPOT": 2, "PERP": 2, "FTS": 3, "OPT": 5}[kind]
    if len(rest) != need:
        raise ValueError(f"{kind} symbol id needs {need} parts after the type: {symbol_id!r}")
    if kind == "PERP":
        rest.append("PERP")
    return _token(exchange, "exchange id", symbol_id), "-".join(rest), TYPE_TO_CLASS[kind]


def to_symbol_id(venue: str, instrument: str, data_class: str) -> str:
    """The CoinAPI symbol id streaming ``instrument`` of class ``data_class`` at ``venue``."""
    try:
        kind = CLASS_TO_TYPE[data_class]
    except KeyError:
        raise ValueError(f"unknown data class {data_class!r}") from None
    parts = instrument.split("-")
    if kind == "PERP" and len(parts) == 3 and parts[2] == "PERP":
        parts = parts[:2]
    need = {"SPOT": 2, "PERP": 2, "FTS": 3, "OPT": 5}[kind]
    if len(parts) != need:
        raise ValueError(f"{instrument!r} is not a {data_class} instrument name")
    name = f"{venue}/{instrument}"
    parts = [_token(p, "instrument part", name) for p in parts]
    sid = "_".join([_token(venue, "venue", name), kind, *parts])
    return sid
