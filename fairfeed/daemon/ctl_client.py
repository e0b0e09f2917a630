"""`fairfeed ctl`: talk to a running daemon's control socket.

Readable tables by default, ``--json`` for scripts. Exit codes: 0 done; 1 the daemon refused the
command (its message is printed); 2 usage error; 3 no daemon is running at that socket; 4 the
socket is not accessible (permissions); 5 no or a malformed answer (timeout, protocol error).
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from fairfeed.daemon import ctl_protocol as proto

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_ACCESS, EXIT_PROTOCOL = range(6)


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def call(path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Send one command; return its result or raise CtlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise CtlError(
                f"no daemon is running at {path} (the socket does not exist)", EXIT_NOT_RUNNING
            ) from None
        except ConnectionRefusedError:
            raise CtlError(
                f"no daemon is running at {path} (connection refused)", EXIT_NOT_RUNNING
            ) from None
        except PermissionError:
            raise CtlError(
                f"permission denied on {path}: run as the daemon's user or a member of its "
                "control group",
                EXIT_ACCESS,
            ) from None
        except OSError as exc:
            code = EXIT_NOT_RUNNING if exc.errno in (errno.ENOTSOCK, errno.ECONNREFUSED) else 5
            raise CtlError(f"cannot connect to {path}: {exc.strerror}", code) from None
        sock.sendall(proto.request(1, cmd, args))
        buf = bytearray()
        while b"\n" not in buf:
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                raise CtlError(
                    f"no answer from the daemon within {timeout}s", EXIT_PROTOCOL
                ) from None
            if not chunk:
                raise CtlError("the daemon closed the connection without answering", EXIT_PROTOCOL)
            buf += chunk
    finally:
        sock.close()
    try:
        resp = orjson.loads(bytes(buf).split(b"\n", 1)[0])
    except orjson.JSONDecodeError:
        raise CtlError("malformed answer from the daemon", EXIT_PROTOCOL) from None
    if not resp.get("ok"):
        err = resp.get("error") or {}
        raise CtlError(f"{err.get('code', 'error')}: {err.get('message', '')}", EXIT_REFUSED)
    return resp.get("result")


# -- rendering -------------------------------------------------------------------------------
def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _age(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


_CHANGE_LABELS = (
    ("subscribed", "added"),
    ("already subscribed", "already"),
    ("unsubscribed", "removed"),
    ("not subscribed", "absent"),
    ("subscribed", "subscribed"),
    ("unsubscribed", "unsubscribed"),
)


def render(cmd: str, result: Any) -> str:
    if cmd == "list":
        subs = result["subscriptions"]
        if not subs:
            return "no subscriptions"
        rows = [
            [s["provider"], s["venue"], s["instrument"], s["data_class"], s["state"],
             s["messages"], _age(s["last_data_age"]), s["worker"], s["connections"]]
            for s in subs
        ]  # fmt: skip
        return _table(
            rows,
            ["PROVIDER", "VENUE", "INSTRUMENT", "CLASS", "STATE", "MESSAGES", "AGE", "WORKER",
             "CONNS"],
        )  # fmt: skip
    if cmd in ("subscribe", "unsubscribe", "reload"):
        out = []
        for label, key in _CHANGE_LABELS:
            for k in result.get(key, []):
                out.append(f"{label}: {k['provider']} {k['venue']} {k['instrument']}")
        if result.get("restart_required"):
            out.append("changed, needs a restart: " + ", ".join(result["restart_required"]))
        return "\n".join(out) or "nothing changed"
    if cmd == "status":
        head = (
            f"fairfeed pid {result['pid']}  up {result['uptime']:.0f}s  "
            f"config {result['config']}  subscriptions {result['subscriptions']}"
        )
        procs = _table(
            [[p["name"], p["pid"], "yes" if p["ready"] else "no", _age(p["heartbeat_age"]),
              p["restarts"], p["last_exit"]] for p in result["processes"]],
            ["PROCESS", "PID", "READY", "HEARTBEAT", "RESTARTS", "LAST EXIT"],
        )  # fmt: skip
        rings = _table(
            [[r["worker"], f"{r['fill']}/{r['capacity']}", r["written"], r["dropped"]]
             for r in result["rings"]],
            ["RING", "FILL", "WRITTEN", "DROPPED"],
        )  # fmt: skip
        k = result["kafka"]
        kafka = (
            f"kafka {k['bootstrap']}: delivered {k['delivered']}  errors {k['errors']}  "
            f"retries {k['retries']}  dropped {k['dropped']}  queue {k['queue']}"
        )
        return "\n\n".join([head, procs, rings, kafka])
    if cmd == "stats":
        names = list(result["processes"])
        fields = list(result["totals"])
        rows = [[f, *(result["processes"][n].get(f, 0) for n in names), result["totals"][f]]
                for f in fields]  # fmt: skip
        return _table(rows, ["COUNTER", *[n.upper() for n in names], "TOTAL"])
    if cmd == "set-log-level":
        return f"log level {result['level']}"
    return json.dumps(result, indent=2)


# -- command line ----------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    ctl = sub.add_parser("ctl", help="control a running daemon")
    ctl.add_argument("--socket", help="control socket (default: from --config, else the default)")
    ctl.add_argument("--config", "-c", help="the daemon's configuration (to find its socket)")
    ctl.add_argument("--json", action="store_true", help="print the raw JSON result")
    ctl.add_argument("--timeout", type=float, default=10.0)
    cmds = ctl.add_subparsers(dest="ctl_command", required=True)
    ls = cmds.add_parser("list", help="subscriptions and their state")
    ls.add_argument("--provider")
    for name in ("subscribe", "unsubscribe"):
        p = cmds.add_parser(name, help=f"{name} instruments of a provider, live")
        p.add_argument("provider")
        p.add_argument("instruments", nargs="+")
        p.add_argument("--venue", default="")
        p.add_argument("--class", dest="data_class", default="")
    cmds.add_parser("status", help="processes, heartbeats, restarts, rings, Kafka")
    cmds.add_parser("stats", help="every counter per process")
    lvl = cmds.add_parser("set-log-level", help="change the log level of every process")
    lvl.add_argument("level")
    cmds.add_parser("reload", help="re-read the configuration file and apply the difference")


def socket_path(args: argparse.Namespace) -> Path:
    from fairfeed.core import config
    from fairfeed.daemon.ctl_server import default_socket_path

    if args.socket:
        return Path(args.socket)
    if args.config:
        cfg = config.load(args.config)
        if cfg.daemon.control_socket:
            return Path(cfg.daemon.control_socket)
    return default_socket_path()


def main(args: argparse.Namespace) -> int:
    from fairfeed.core import config

    cmd = args.ctl_command
    payload: dict[str, Any] = {}
    if cmd == "list" and args.provider:
        payload = {"provider": args.provider}
    elif cmd in ("subscribe", "unsubscribe"):
        payload = {"provider": args.provider, "instruments": args.instruments}
        if args.venue:
            payload["venue"] = args.venue
        if args.data_class:
            payload["data_class"] = args.data_class
    elif cmd == "set-log-level":
        payload = {"level": args.level}
    try:
        path = socket_path(args)
        result = call(path, cmd, payload, args.timeout)
    except config.ConfigError as exc:
        print(f"fairfeed ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CtlError as exc:
        print(f"fairfeed ctl: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(cmd, result))
    return EXIT_OK
