"""Process titles: ``fairfeed: ROLE`` for the supervisor and each child in ``ps`` and ``top``.

The title replaces the command line (``/proc/PID/cmdline``: ``ps aux``, ``top -c``, ``pgrep -f``).
The kernel keeps a second, shorter name (``/proc/PID/comm``: ``ps -e``, ``top``, ``pgrep``) of at
most 15 bytes, where ``fairfeed: ingest-0`` would be cut to ``fairfeed: inges`` for every
worker alike; it gets ``ff: ROLE`` instead, so each process stays distinct there too.
"""

from __future__ import annotations

import setproctitle

COMM_MAX = 15  # bytes of /proc/PID/comm (TASK_COMM_LEN - 1)


def set_title(role: str) -> None:
    """Name this process ``fairfeed: <role>`` (command line) and ``ff: <role>`` (comm)."""
    setproctitle.setproctitle(f"fairfeed: {role}")
    # The calling thread's name is the process's comm when it is the main thread.
    setproctitle.setthreadtitle(comm_name(role))


def comm_name(role: str) -> str:
    """The short name of ``role`` as the kernel will show it."""
    return f"ff: {role}"[:COMM_MAX]
