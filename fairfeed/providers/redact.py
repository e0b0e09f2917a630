"""Provider text made safe to log: a provider may echo our request, API key included, in its
error messages, so configured keys and anything that looks like a credential are redacted.

Applied only to lines about to be logged (:class:`fairfeed.providers.parsing.ErrorLog`), never
to the data path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "<redacted>"
_MIN_SECRET = 4  # shorter values would redact ordinary words

# `Bearer <token>`, and `apikey=...`, `"api_key": "..."`, `X-CoinAPI-Key: ...`, `token=...`
_CREDENTIAL = re.compile(
    r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(\b(?:x-[a-z-]*key|api[_-]?key|access[_-]?token|token|secret|password)"
    r"""["']?\s*[:=]\s*["']?)[^\s"'&,;}\]]+"""
)


class Redactor:
    """``redactor(text)``: ``text`` with every secret and credential-looking value masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so a key containing another is masked whole
        self.secrets = tuple(
            sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True)
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2)) + MASK, text)
