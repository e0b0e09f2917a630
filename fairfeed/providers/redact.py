"""Provider text made safe to log: a provider may echo our request, API key included, in its
error messages, so configured keys and anything that looks like a credential are redacted.

Applied to lines about to be logged (:class:`fairfeed.providers.parsing.ErrorLog`) and to dead
letters (a refused frame is published as it came, and may be such an echo); never to the data
path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "<redacted>"
_MASK_BYTES = MASK.encode()
_MIN_SECRET = 4  # shorter values would redact ordinary words

# `Bearer <token>`, and `apikey=...`, `"api_key": "..."`, `X-CoinAPI-Key: ...`, `token=...`
_PATTERN = (
    r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(\b(?:x-[a-z-]*key|api[_-]?key|access[_-]?token|token|secret|password)"
    r"""["']?\s*[:=]\s*["']?)[^\s"'&,;}\]]+"""
)
_CREDENTIAL = re.compile(_PATTERN)
_CREDENTIAL_BYTES = re.compile(_PATTERN.encode())


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

    def frame(self, data: bytes) -> bytes:
        """The same for raw bytes (a frame need not be UTF-8)."""
        for secret in self.secrets:
            data = data.replace(secret.encode(), _MASK_BYTES)
        return _CREDENTIAL_BYTES.sub(lambda m: (m.group(1) or m.group(2)) + _MASK_BYTES, data)
