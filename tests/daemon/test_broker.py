"""LocalBroker against the real Tansu binary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from fairfeed.kafka.broker import BrokerError, LocalBroker, ensure_topics
from tests.waiting import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); stop() reaps, so check /proc too
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_start_stop_leaves_no_process() -> None:
    broker = LocalBroker()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    broker.start(timeout=10)
    pid = broker.pid
    assert pid is not None and _alive(pid)
    assert broker.running()
    # own process group (start_new_session)
    assert os.getpgid(pid) == pid
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
    assert md.brokers
    broker.stop()
    assert not broker.running()
    assert not _alive(pid)
    broker.stop()  # idempotent
    assert "listening on" in broker.output_tail()


def test_context_manager_and_produce() -> None:
    with LocalBroker() as broker:
        pid = broker.pid
        p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        p.produce("ctx", b"v", b"k")
        assert p.flush(10) == 0
        # clients connected: stop must still be quick (SIGTERM, then SIGKILL after the grace)
    assert pid is not None and not _alive(pid)


def test_bootstrap_works_for_admin(kafka_broker: LocalBroker) -> None:
    ensure_topics(kafka_broker.bootstrap, ["admin-a", "admin-b"], partitions=3)
    ensure_topics(kafka_broker.bootstrap, ["admin-a", "admin-b"], partitions=3)  # idempotent
    md = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=5)
    assert len(md.topics["admin-a"].partitions) == 3
    assert len(md.topics["admin-b"].partitions) == 3


def test_bad_binary_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(BrokerError, match="not found"):
        LocalBroker(binary=tmp_path / "no-such-tansu").start()
    notexec = tmp_path / "tansu"
    notexec.write_text("not a program")
    with pytest.raises(BrokerError, match="cannot run"):
        LocalBroker(binary=notexec).start()


def test_binary_that_exits_reports_its_output(tmp_path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'fake broker: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"(?s)exited with code 3.*fake broker: cannot start"):
        LocalBroker(binary=fake).start(timeout=5)


def test_occupied_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = LocalBroker(port=port)
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}") as info:
            broker.start(timeout=3)
        assert not broker.running()
    print(info.value)


def test_killed_parent_leaves_no_broker() -> None:
    """PR_SET_PDEATHSIG: the broker dies with the process that started it, even by SIGKILL."""
    code = (
        "import os, sys, time\n"
        "from fairfeed.kafka.broker import LocalBroker\n"
        "b = LocalBroker().start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        wait_for(lambda: not _alive(pid), 5, "the broker to die with its parent", 0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
