"""A real `mlflow server` whose launcher is killed with SIGKILL: its web server keeps the port
until the platform's wrapper (ops/mlflow_server.py) reaps it on the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from support.loopback import free_port

from evolora.paths import PROJECT_ROOT
from ops.components import OFFLINE_ENV, executable
from ops.mlflow_server import orphaned_servers


def start(port: int, root: Path) -> subprocess.Popen[bytes]:
    command = [executable("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--default-artifact-root", str(root / "artifacts")]
    env = {**os.environ, **OFFLINE_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (root / "mlflow.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.mlflow_server", "--port", str(port), "--", *command],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def web_server_of(launcher: subprocess.Popen[bytes], port: int, root: Path) -> psutil.Process:
    """The launcher's web server child, once it has one and /health answers (an orphan on
    the port answers /health too, until the wrapper has reaped it)."""
    deadline = time.monotonic() + 240
    while True:
        assert launcher.poll() is None, (root / "mlflow.log").read_text()[-3000:]
        children = psutil.Process(launcher.pid).children()
        try:
            if children and httpx.get(f"http://127.0.0.1:{port}/health",
                                      timeout=5).status_code == 200:
                [child] = children
                return child
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (root / "mlflow.log").read_text()[-3000:]
        time.sleep(0.5)


@pytest.mark.server
def test_a_web_server_left_by_a_killed_launcher_is_reaped_on_the_next_start(
        tmp_path: Path) -> None:
    port = free_port()
    first = start(port, tmp_path)
    survivors: list[psutil.Process] = []
    second = None
    try:
        child = web_server_of(first, port, tmp_path)
        survivors.append(child)
        # The wrapper exec'd MLflow's launcher: supervisord's pid is MLflow's own.
        assert "server" in psutil.Process(first.pid).cmdline()
        assert orphaned_servers(port) == []  # its launcher is alive: not an orphan

        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        # The gap this closes: the child still serves the port, unsupervised.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert [process.pid for process in orphaned_servers(port)] == [child.pid]

        second = start(port, tmp_path)
        new_child = web_server_of(second, port, tmp_path)
        survivors.append(new_child)
        assert new_child.pid != child.pid
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert "mlflow.orphan_reaped" in (tmp_path / "mlflow.log").read_text()
    finally:
        for launcher in (first, second):
            if launcher is not None and launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait(30)
        for process in survivors:
            if process.is_running():
                process.kill()
