"""The control-socket protocol: framing and validation, shared by server and client.

One JSON object per line (UTF-8, ``\\n``-terminated) in each direction, answered in order:

* request: ``{"id": 7, "cmd": "subscribe", "args": {...}}`` (``id``: integer or string, echoed)
* success: ``{"id": 7, "ok": true, "result": {...}}``
* failure: ``{"id": 7, "ok": false, "error": {"code": "invalid_argument", "message": "..."}}``

Error codes: ``bad_request`` (not JSON, not an object, missing or mistyped ``id`` / ``cmd`` /
``args``), ``too_large`` (a line over :data:`MAX_REQUEST` bytes; the connection is closed),
``unknown_command``, ``invalid_argument``, ``busy`` (too many clients; closed), ``timeout``
(silent too long; closed), ``failed`` (the command could not be carried out), ``internal``.
See docs/control-protocol.md.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_REQUEST = 64 * 1024  # bytes in one request line
COMMANDS = ("list", "subscribe", "unsubscribe", "status", "stats", "set-log-level", "reload")


class ProtocolError(Exception):
    """A request that cannot be served; ``code`` is one of the documented error codes."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """``(id, cmd, args)`` of one request line; raises ProtocolError."""
    try:
        req = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_request", f"not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ProtocolError("bad_request", "a request is a JSON object")
    rid = req.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        raise ProtocolError("bad_request", "'id' must be an integer or a string")
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("bad_request", "'cmd' must be a string", rid)
    args = req.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", "'args' must be an object", rid)
    unknown = set(req) - {"id", "cmd", "args"}
    if unknown:
        raise ProtocolError("bad_request", f"unknown request fields: {sorted(unknown)}", rid)
    if cmd not in COMMANDS:
        raise ProtocolError(
            "unknown_command", f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})", rid
        )
    return rid, cmd, args


def ok(rid: Any, result: Any) -> bytes:
    return orjson.dumps({"id": rid, "ok": True, "result": result}) + b"\n"


def error(rid: Any, code: str, message: str) -> bytes:
    return (
        orjson.dumps({"id": rid, "ok": False, "error": {"code": code, "message": message}}) + b"\n"
    )


def request(rid: Any, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"id": rid, "cmd": cmd, "args": args or {}}) + b"\n"
