"""MLflow's server under supervision: a web server orphaned by a killed parent is reaped first.

`mlflow server` is a launcher: it starts its web server (`python -m uvicorn ...
mlflow.server.fastapi_app:app`) as a child process and waits on it. When only the launcher
dies (`kill -9`, an OOM kill), the child is re-parented and keeps the port, so every restart
supervisord makes fails with "address in use" while the old child serves on unsupervised.
This wrapper is the component's command:

    python -m ops.mlflow_server --port 5000 -- mlflow server --host ... --port 5000 ...

It stops any MLflow web server that listens on the port and whose launcher is gone, then
replaces itself with the real command (exec: supervisord's pid is MLflow's, its signals reach
it directly). A server whose launcher is alive, or any other program on the port, is left
alone: that is a second platform or someone else's process, and the start fails visibly.
"""

from __future__ import annotations

import argparse
import os
import sys

import psutil
import structlog

log = structlog.get_logger(__name__)

# What MLflow's own launcher runs: uvicorn (the default) or gunicorn on MLflow's app.
_WEB_SERVER_APPS = ("mlflow.server.fastapi_app:app", "mlflow.server:app")


def _is_mlflow_web_server(process: psutil.Process) -> bool:
    command = process.cmdline()
    return any(app in part for part in command for app in _WEB_SERVER_APPS)


def _is_mlflow_launcher(process: psutil.Process | None) -> bool:
    if process is None:
        return False
    command = process.cmdline()
    return any(os.path.basename(part) == "mlflow" or part.endswith("mlflow.cli")
               for part in command[:3]) and "server" in command


def _listens_on(process: psutil.Process, port: int) -> bool:
    return any(conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
               for conn in process.net_connections(kind="inet"))


def orphaned_servers(port: int) -> list[psutil.Process]:
    """MLflow web servers listening on `port` whose `mlflow server` launcher is gone."""
    found = []
    for process in psutil.process_iter():
        try:
            if (process.pid != os.getpid() and _is_mlflow_web_server(process)
                    and _listens_on(process, port)
                    and not _is_mlflow_launcher(process.parent())):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or another user's: never ours to stop
    return found


def reap_orphaned_servers(port: int, *, wait_s: float = 10.0) -> list[int]:
    """Stop the orphans `orphaned_servers` finds (TERM, then KILL after `wait_s`); their pids."""
    orphans = orphaned_servers(port)
    for process in orphans:
        log.warning("mlflow.orphan_reaped", pid=process.pid, port=port,
                    reason="its `mlflow server` launcher is gone and it still holds the port")
        process.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=wait_s)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=wait_s)
    return [process.pid for process in orphans]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ops.mlflow_server",
        description="Reap an orphaned MLflow web server on PORT, then exec COMMAND.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    reap_orphaned_servers(args.port)
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
