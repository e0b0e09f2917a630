"""Start-up failures a clumsy operator causes end in one line naming the problem and exit 2,
never a traceback (issue 15): a file that is not UTF-8, a control group that does not exist,
a state file that cannot be written, a control socket another daemon serves."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.daemon.daemon_process import DaemonProcess

CASES = {
    "not-utf8": (b"[daemon]\nworkers = 1\n\xff\xfe\n", "not UTF-8 text: byte 0xff"),
    "no-group": (
        b'[daemon]\ncontrol_group = "fairfeed-no-such-group"\n',
        "daemon.control_group: no group 'fairfeed-no-such-group'",
    ),
    "state-file": (
        b'[daemon]\nstate_file = "/proc/fairfeed-none/state.json"\n',
        "daemon.state_file: cannot write /proc/fairfeed-none/state.json",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_start_failure_is_one_line_and_exit_2(tmp_path: Path, kafka_broker, case: str) -> None:
    body, message = CASES[case]
    config = tmp_path / "fairfeed.toml"
    kafka = f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\nspool_dir = "{tmp_path}/spool"\n'
    config.write_bytes(body + kafka.encode())
    daemon = DaemonProcess(tmp_path, config)
    code = daemon.exits()
    err = daemon.stderr()
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


def test_a_socket_another_daemon_serves_is_one_line_and_exit_2(
    tmp_path: Path, kafka_broker
) -> None:
    config = tmp_path / "fairfeed.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\nspool_dir = "{tmp_path}/spool"\n'
    )
    path = tmp_path / "run" / "fairfeed" / "control.sock"  # DaemonProcess's socket
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as other:  # a running daemon's socket, as it looks
        other.bind(str(path))
        other.listen()
        daemon = DaemonProcess(tmp_path, config)
        code = daemon.exits()
    err = daemon.stderr()
    assert code == 2, err
    assert f"daemon.control_socket: {path}: another daemon is serving this socket" in err
    assert "Traceback" not in err
