"""The one rule for the names of providers, venues and instruments.

The configuration, the state file and the control socket all check names here, so a name the
daemon accepts live is one it would accept at start, and no name can carry a quote, a newline or
a megabyte into a metric label, a Kafka key or a log line.
"""

from __future__ import annotations

import re

_RULES = {
    # lower case allowed: provider names are the operator's own, venues come in either case
    "provider": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"), "letters, digits, . _ -"),
    "venue": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"), "letters, digits, . _ -"),
    "instrument": (
        re.compile(r"[A-Z0-9][A-Z0-9._/-]{0,47}"),
        "upper-case canonical names like BTC-USD",
    ),
}
MAX_LENGTH = {"provider": 64, "venue": 64, "instrument": 48}
_SHOWN = 40  # characters of a bad name quoted back in a message


def shown(value: str) -> str:
    """``value`` quoted for a message, cut short when long (a message never echoes a megabyte)."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}… ({len(value)} characters)"


def name_problem(kind: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``kind`` ("provider", "venue", "instrument") name, or None."""
    rule, hint = _RULES[kind]
    if not isinstance(value, str):
        return f"{kind} names are strings, not {type(value).__name__}"
    if len(value) > MAX_LENGTH[kind]:
        return f"invalid {kind} {shown(value)}: at most {MAX_LENGTH[kind]} characters"
    if not rule.fullmatch(value):
        return f"invalid {kind} {shown(value)}: use {hint}"
    return None
