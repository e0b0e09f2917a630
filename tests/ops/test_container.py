"""The Dockerfile, checked offline (no Docker engine here): hadolint, its stages, user,
health check, entry point and signal; and what it runs — the warm-up command leaves a Numba cache
that a fresh process (the container, or a pod that copied it) loads without compiling."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fairfeed.cli import main as cli_main
from fairfeed.daemon.metrics_http import MetricsHTTPServer
from tests.ops import dockerfile as df

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_hadolint_passes() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_on_slim_python_311() -> None:
    stages = df.stages()
    assert len(stages) >= 2
    base = df.arg_defaults()["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-slim"), base
    froms = [i["value"] for s in stages for i in s if i["instruction"] == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    # The runtime stage takes the built environment, not the sources and the build tools.
    assert any(v.startswith("--from=build ") for v in df.final("COPY"))
    assert not any(v.split()[0] in ("fairfeed", ".") for v in df.final("COPY"))


def test_runs_as_a_non_root_numeric_user() -> None:
    (user,) = df.final("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, user  # numeric: runAsNonRoot can verify it


def test_warm_up_runs_as_that_user_into_the_cache_dir() -> None:
    final = df.stages()[-1]
    kinds = [i["instruction"] for i in final]
    warm = [n for n, i in enumerate(final) if i["instruction"] == "RUN" and "warm-up" in i["value"]]
    assert warm and kinds.index("USER") < warm[0]
    env = df.env(final)
    assert env["NUMBA_CACHE_DIR"].startswith("/opt/fairfeed/")
    assert env["NUMBA_CPU_NAME"] == "${NUMBA_CPU_NAME}" and df.arg_defaults()["NUMBA_CPU_NAME"]


def test_health_check_entry_point_and_stop_signal() -> None:
    (health,) = df.final("HEALTHCHECK")
    assert "/healthz" in health
    assert df.final("STOPSIGNAL") in ([], ["SIGTERM"])  # SIGTERM: the daemon's graceful stop
    (entry,) = df.final("ENTRYPOINT")
    (cmd,) = df.final("CMD")
    argv = json.loads(entry) + json.loads(cmd)
    assert argv[:2] == ["fairfeed", "run"] and "--no-live" in argv
    env = df.env(df.stages()[-1])
    assert env["STATE_DIRECTORY"] and env["RUNTIME_DIRECTORY"]
    # The CLI accepts the image's arguments (argparse exits 0 on --help after parsing them).
    with pytest.raises(SystemExit) as exc:
        cli_main([*argv[1:], "--help"])
    assert exc.value.code == 0


def _health_argv(port: int) -> list[str]:
    """The HEALTHCHECK command with the port changed (9464 may be taken on this machine)."""
    (health,) = df.final("HEALTHCHECK")
    argv = json.loads(health[health.index("CMD") + 3 :].strip())
    assert argv[0] == "python"
    return [sys.executable, *[a.replace(":9464/", f":{port}/") for a in argv[1:]]]


@pytest.mark.parametrize("healthy", [True, False])
def test_health_check_command_follows_healthz(healthy: bool) -> None:
    server = MetricsHTTPServer(
        "127.0.0.1:0",
        lambda: (b"", "text/plain"),
        lambda: (healthy, "supervisor loop alive" if healthy else "stuck"),
        lambda: (True, "ready"),
    )
    server.open()
    proc = subprocess.Popen(_health_argv(server.address[1]), stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:  # serve as the supervisor's loop does
            ready, writable, _ = select.select(server.readers(), server.writers(), [], 0.05)
            server.handle(ready, writable)
            server.tick()
    finally:
        server.close()
    assert (proc.wait() == 0) is healthy


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    copied = {
        word
        for stage in df.stages()
        for ins in stage
        if ins["instruction"] == "COPY" and not ins["value"].startswith("--from=")
        for word in ins["value"].split()[:-1]
    }
    assert {"pyproject.toml", "README.md", "fairfeed"} <= copied
    assert not copied & ignored, copied & ignored


_PROBE = textwrap.dedent(
    """
    import numba.core.event as ev
    with ev.install_recorder("numba:compile") as rec:
        from fairfeed.hotpath.metrics import warm_metrics
        from fairfeed.hotpath.warmup import warm_up
        warm_up()
        warm_metrics()
    print(sum(1 for _, e in rec.buffer if e.is_start))
    """
)


@pytest.mark.slow
def test_the_image_warm_up_leaves_a_cache_a_new_process_loads_without_compiling(
    tmp_path: Path,
) -> None:
    """What `RUN fairfeed warm-up` does at build time, with the image's Numba settings; then a
    copy of the cache elsewhere (the pod's init container copies it to a writable volume)."""
    (warm,) = [
        i["value"] for i in df.stages()[-1] if i["instruction"] == "RUN" and "warm-up" in i["value"]
    ]
    built = tmp_path / "image-cache"
    env = dict(
        os.environ, NUMBA_CACHE_DIR=str(built), NUMBA_CPU_NAME=df.arg_defaults()["NUMBA_CPU_NAME"]
    )
    env["PATH"] = f"{BIN}:{env['PATH']}"
    proc = subprocess.run(warm, shell=True, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(built.rglob("*.nbi")), "no Numba index written"
    pod = tmp_path / "pod-cache"
    shutil.copytree(built, pod)
    shutil.rmtree(built)
    env["NUMBA_CACHE_DIR"] = str(pod)
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "0", f"compiled {probe.stdout.strip()} functions at start"
