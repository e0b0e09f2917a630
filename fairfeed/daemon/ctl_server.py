"""The supervisor's control socket: a non-blocking Unix-socket server run by the main loop.

It never blocks the supervisor and never lets a client hurt it: requests are capped in size
and must arrive whole within ``idle_timeout`` of their first byte, silent clients are dropped
after ``idle_timeout``, clients beyond ``max_clients`` are told ``busy`` and closed, and answers
are queued and written as the socket takes them, at most ``max_output`` bytes per client: one
that asks without reading is dropped (:class:`~fairfeed.daemon.sockserve.LoopServer`). Framing and
error codes: :mod:`fairfeed.daemon.ctl_protocol`; commands: :mod:`fairfeed.daemon.ctl_handlers`.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairfeed.daemon import ctl_protocol as proto
from fairfeed.daemon.sockserve import Client, LoopServer

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Any]


class ControlSocketError(RuntimeError):
    """The socket cannot be created (path in use by a running daemon, permissions, group)."""


def default_socket_path() -> Path:
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "fairfeed" if base else Path(f"/tmp/fairfeed-{os.getuid()}")
    return root / "control.sock"


class ControlServer(LoopServer):
    """Serves ``handler(cmd, args) -> result`` on a Unix socket at ``path``."""

    what = "control socket"
    label = "control"

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        group: str = "",
        max_clients: int = 32,
        idle_timeout: float = 10.0,
        max_output: int = 1 << 20,
    ) -> None:
        super().__init__(max_clients=max_clients, idle_timeout=idle_timeout, max_output=max_output)
        self.path = path
        self.handler = handler
        self.group = group
        self.served = 0

    # -- lifetime ------------------------------------------------------------------------
    def open(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ControlSocketError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that died
            else:
                raise ControlSocketError(f"{path}: another daemon is serving this socket")
            finally:
                probe.close()
        gid = -1
        if self.group:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ControlSocketError(f"control_group {self.group!r}: no such group") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o117)  # the socket is born 0660: never briefly world-accessible
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            if gid >= 0:
                os.chown(path, -1, gid)
            os.chmod(path, 0o660)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"cannot serve the control socket {path}: {exc}") from exc
        self.sock = sock
        log.info("control socket %s", path)

    def close(self) -> None:
        had = self.sock is not None
        super().close()
        if had:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # -- LoopServer hooks ----------------------------------------------------------------
    def refuse(self, c: Client) -> None:
        c.outbuf += proto.error(None, "busy", f"more than {self.max_clients} clients")

    def on_idle(self, c: Client) -> None:
        c.outbuf += proto.error(None, "timeout", f"idle for {self.idle_timeout:g}s")

    def on_slow(self, c: Client) -> None:
        c.outbuf += proto.error(
            None, "timeout", f"no complete request within {self.request_timeout:g}s"
        )

    def on_data(self, c: Client) -> None:
        while not c.closing and not self.full(c):
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > proto.MAX_REQUEST:
                    c.outbuf += proto.error(
                        None, "too_large", f"request over {proto.MAX_REQUEST} bytes"
                    )
                    c.closing = True
                    c.inbuf.clear()
                return
            line = bytes(c.inbuf[:nl])
            del c.inbuf[: nl + 1]
            if len(line) > proto.MAX_REQUEST:
                c.outbuf += proto.error(
                    None, "too_large", f"request over {proto.MAX_REQUEST} bytes"
                )
                c.closing = True
                return
            if line.strip():
                c.outbuf += self._serve(line)

    def _serve(self, line: bytes) -> bytes:
        rid: Any = None
        try:
            rid, cmd, args = proto.parse_request(line)
            result = self.handler(cmd, args)
        except proto.ProtocolError as exc:
            return proto.error(exc.request_id if rid is None else rid, exc.code, exc.message)
        except Exception as exc:
            log.exception("control command failed")
            return proto.error(rid, "internal", f"{type(exc).__name__}: {exc}")
        self.served += 1
        return proto.ok(rid, result)
