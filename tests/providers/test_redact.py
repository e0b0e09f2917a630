"""Provider text is redacted before it is logged: configured keys and credential-looking values."""

from __future__ import annotations

import logging

import pytest

from fairfeed.providers.parsing import ErrorLog
from fairfeed.providers.redact import MASK, Redactor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bad key sk-live-123456 for you", f"bad key {MASK} for you"),
        ('{"apikey": "abc-def-ghi", "type": "hello"}', f'{{"apikey": "{MASK}", "type": "hello"}}'),
        ("GET /v1/x?apikey=Zz9&limit=3", f"GET /v1/x?apikey={MASK}&limit=3"),
        ("Authorization: Bearer eyJhbGciOi.J9.x-y", f"Authorization: Bearer {MASK}"),
        ("X-CoinAPI-Key: 73034021-THIS", f"X-CoinAPI-Key: {MASK}"),
        ("api_key=1 token:2 password = 3", f"api_key={MASK} token:{MASK} password = {MASK}"),
        ("rate limited, retry in 3 s", "rate limited, retry in 3 s"),  # nothing to hide
    ],
)
def test_keys_and_credentials_are_masked(text: str, expected: str) -> None:
    assert Redactor(["sk-live-123456", "key"])(text) == expected  # "key": too short


def test_every_configured_key_is_masked_and_the_longest_first() -> None:
    redact = Redactor(["abcd", "abcdefgh", "zzzz"])
    assert redact("abcdefgh zzzz abcd") == f"{MASK} {MASK} {MASK}"


def test_error_log_redacts_reason_and_frame(caplog) -> None:
    elog = ErrorLog(logging.getLogger("t.redact"), "p: connection", redact=Redactor(["s3cr3t"]))
    with caplog.at_level(logging.WARNING):
        elog("refused: s3cr3t", b'{"apikey": "s3cr3t"}')
    (line,) = [r.getMessage() for r in caplog.records]
    assert "s3cr3t" not in line and line.count(MASK) == 2


def test_frames_are_redacted_as_bytes_even_when_not_utf8() -> None:
    redact = Redactor(["sk-live-123456"])
    frame = b'\xff{"error":"bad key sk-live-123456","apikey":"other-1"}\xfe'
    out = redact.frame(frame)
    assert b"sk-live-123456" not in out and b"other-1" not in out
    assert out == b'\xff{"error":"bad key <redacted>","apikey":"<redacted>"}\xfe'
