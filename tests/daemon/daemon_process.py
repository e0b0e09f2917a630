"""Run the real daemon as a subprocess in tests: start, find its children, stop, check leftovers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from fairfeed.ipc.shm import list_segments
from tests.waiting import poll

_STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(") ", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return kids


class DaemonProcess:
    """``fairfeed run`` in a subprocess with its output in files under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        config: Path | None,
        live: bool = False,
        env: dict[str, str] | None = None,
        tree: Path | None = None,
    ) -> None:
        """``env``: extra environment variables for the daemon (e.g. ``NOTIFY_SOCKET``);
        ``tree``: run the ``fairfeed`` package of another source tree (e.g. a ``git worktree``
        of another commit; benchmarks compare two that way)."""
        self.out_path = workdir / "daemon.out"
        self.err_path = workdir / "daemon.err"
        args = [sys.executable, "-m", "fairfeed", "run", "--live" if live else "--no-live"]
        if config is not None:
            args += ["--config", str(config)]
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        # Each daemon gets its own control socket and state file (never the user's).
        self.socket = workdir / "run" / "fairfeed" / "control.sock"
        self.state = workdir / "state" / "fairfeed" / "subscriptions.json"
        extra_env = env
        env = dict(os.environ, XDG_RUNTIME_DIR=str(workdir / "run"))
        env["XDG_STATE_HOME"] = str(workdir / "state")
        env.pop("RUNTIME_DIRECTORY", None)
        env.pop("STATE_DIRECTORY", None)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)  # a test runner started by systemd must not lend its socket
        env.update(extra_env or {})
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        self.proc = subprocess.Popen(
            args, stdout=self._out, stderr=self._err, env=env, cwd=tree or None
        )
        self.pid = self.proc.pid
        self.seen_children: set[int] = set()

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def started(self) -> list[tuple[str, int]]:
        """(child name, pid) for every spawn the supervisor logged, in order."""
        return [(m[1], int(m[2])) for m in _STARTED.finditer(self.stderr())]

    def pid_of(self, name: str) -> int | None:
        pids = [pid for child, pid in self.started() if child == name]
        return pids[-1] if pids else None

    def note_children(self) -> list[int]:
        kids = children_of(self.pid)
        self.seen_children.update(kids)
        return kids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.note_children()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"daemon did not stop within {timeout}s:\n{self.stderr()}"
            ) from None
        self._out.close()
        self._err.close()
        return code

    def exits(self, timeout: float = 60.0) -> int:
        """The exit status of a daemon expected to stop by itself (a start-up failure); killed
        and a failure if it is still running after ``timeout`` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"daemon still running after {timeout}s:\n{self.stderr()}"
            ) from None
        self._out.close()
        self._err.close()
        return code

    def kill(self) -> None:
        for pid in [*self.note_children(), self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def leftovers(self, grace: float = 3.0) -> list[str]:
        """Processes and shared-memory segments of this daemon still present after a stop.

        Allows ``grace`` seconds: multiprocessing's resource tracker (a child of the supervisor)
        exits only once it sees the supervisor's end of its pipe close.
        """
        poll(lambda: not self._left(), grace)
        return self._left()

    def _left(self) -> list[str]:
        left = [_describe(p) for p in sorted(self.seen_children) if alive(p)]
        return left + [f"/dev/shm/{n}" for n in list_segments(f"fairfeed-{self.pid}-")]


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"process {pid}: {cmd}"
