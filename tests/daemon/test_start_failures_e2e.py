"""Start-up failures a clumsy operator causes end in one line naming the problem and exit 2,
never a traceback (issue 15): a file that is not UTF-8, a control group that does not exist,
a state file that cannot be written."""

from __future__ import annotations

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
