"""supervisord as the platform's process manager: its config written from the settings, the
daemon started and stopped, and its XML-RPC API over a Unix socket in the data directory.

Why supervisord: it is maintained, pure Python (one pip install, no system service), runs
each component in the foreground with its own rotated log, restarts a process that dies
(`autorestart`) and backs off when one dies while starting (`startretries`: 1 s, 2 s, ...
apart, then FATAL), stops process groups cleanly (TERM, then KILL after `stopwaitsecs`), and
reports every process's state, pid and start time over XML-RPC, which `evolora status`
reads. Its event listener protocol lets `ops.events` count crashes and recoveries.

Programs are registered with `autostart=false`: `evolora up` starts them in order (the
Prefect server, its deployments, then the rest), so nothing starts before what it needs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from evolora.logs import get_logger
from evolora.paths import PROJECT_ROOT
from evolora.platform import logs_dir, platform_dir, recoveries_path
from evolora.settings import Settings
from ops.components import Component, executable

log = get_logger(__name__)

CONF_NAME = "supervisord.conf"
SOCKET_NAME = "supervisor.sock"
EVENTS_PROGRAM = "evolora-events"
# AF_UNIX paths are limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100
# Seconds a process must stay up to count as started; dying sooner is a failed start
# (retried with backoff).
START_SECONDS = 2


class SupervisorError(RuntimeError):
    """The supervisor could not be reached, started or stopped; the message says the fix."""


def socket_path(settings: Settings) -> Path:
    path = platform_dir(settings) / SOCKET_NAME
    if len(str(path)) > MAX_SOCKET_PATH:
        raise SupervisorError(f"the supervisor's socket path {path} is longer than "
                              f"{MAX_SOCKET_PATH} characters (a Unix socket limit); use a "
                              "shorter paths.data_dir")
    return path


def _quote(value: str) -> str:
    # supervisord expands %(name)s in its values: a literal % is written %%.
    return shlex.quote(value).replace("%", "%%")


def render_config(settings: Settings, components: list[Component]) -> str:
    """The supervisord.conf for `components` (and the event listener)."""
    home, logs = platform_dir(settings), logs_dir(settings)
    retries = settings.platform.start_retries
    lines = [
        "; Written by `evolora up` from the settings; rewritten on every `up`.",
        "[unix_http_server]", f"file={_quote(str(socket_path(settings)))}", "chmod=0700",
        "[supervisord]", f"logfile={_quote(str(logs / 'supervisord.log'))}",
        f"pidfile={_quote(str(home / 'supervisord.pid'))}",
        f"childlogdir={_quote(str(logs))}", f"directory={_quote(str(PROJECT_ROOT))}",
        "logfile_maxbytes=10MB", "logfile_backups=3", "loglevel=info",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]", f"serverurl=unix://{_quote(str(socket_path(settings)))}",
    ]
    for component in components:
        lines += [
            f"[program:{component.name}]",
            "command=" + " ".join(_quote(part) for part in component.command),
            f"directory={_quote(str(PROJECT_ROOT))}",
            "autostart=false", "autorestart=true", f"startsecs={START_SECONDS}",
            f"startretries={retries}", "stopsignal=TERM",
            f"stopwaitsecs={component.stop_wait_s}", "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_quote(str(component.log_path(settings)))}",
            "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=3",
        ]
    lines += [
        f"[eventlistener:{EVENTS_PROGRAM}]",
        "command=" + " ".join(_quote(p) for p in [sys.executable, "-m", "ops.events",
                                                   str(recoveries_path(settings))]),
        f"directory={_quote(str(PROJECT_ROOT))}",
        "events=PROCESS_STATE", "autostart=true", "autorestart=true", "buffer_size=100",
        f"stderr_logfile={_quote(str(logs / 'platform-events.log'))}",
        "stdout_logfile=NONE",
    ]
    return "\n".join(lines) + "\n"


class Supervisor:
    """The XML-RPC API of the running supervisord of one data directory."""

    def __init__(self, settings: Settings) -> None:
        from supervisor.xmlrpc import SupervisorTransport

        self.socket = socket_path(settings)
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket}")
        # The host in this URL is ignored: the transport talks to the socket.
        self.rpc: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def processes(self) -> dict[str, dict[str, Any]]:
        """Every program's info (state name, pid, start time, spawn error), by name."""
        return {info["name"]: info for info in self.rpc.supervisor.getAllProcessInfo()}

    def start(self, name: str) -> None:
        """Start a program (no wait); one already running or starting is left as it is."""
        try:
            self.rpc.supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise SupervisorError(f"the supervisor could not start {name}: "
                                      f"{fault.faultString}") from None

    def stop(self, name: str) -> None:
        try:
            self.rpc.supervisor.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def shutdown(self) -> None:
        self.rpc.supervisor.shutdown()


def start_supervisord(settings: Settings, components: list[Component],
                      env: dict[str, str], timeout_s: float = 30.0) -> Supervisor:
    """Write the config and start supervisord (it daemonises); returns its API once it
    answers. A supervisord already running for this data directory is reused, its config
    reloaded so changed settings apply to programs started from now on."""
    home = platform_dir(settings)
    home.mkdir(parents=True, exist_ok=True)
    logs_dir(settings).mkdir(parents=True, exist_ok=True)
    conf = home / CONF_NAME
    conf.write_text(render_config(settings, components))
    supervisor = Supervisor(settings)
    if supervisor.running():
        added, changed, removed = supervisor.rpc.supervisor.reloadConfig()[0]
        for name in removed:
            supervisor.stop(name)
            supervisor.rpc.supervisor.removeProcessGroup(name)
        for name in [*changed, *added]:
            if name in changed:
                supervisor.stop(name)
                supervisor.rpc.supervisor.removeProcessGroup(name)
            supervisor.rpc.supervisor.addProcessGroup(name)
        return supervisor
    supervisor.socket.unlink(missing_ok=True)  # left by a supervisord that was killed
    result = subprocess.run([executable("supervisord"), "-c", str(conf)],
                            env={**os.environ, **env}, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SupervisorError(f"supervisord did not start: {result.stderr.strip()[-500:]} "
                              f"(config {conf}, log {logs_dir(settings) / 'supervisord.log'})")
    deadline = time.monotonic() + timeout_s
    while not supervisor.running():
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord did not answer on {supervisor.socket} within "
                                  f"{timeout_s:.0f} s; see {logs_dir(settings)}/supervisord.log")
        time.sleep(0.1)
    log.info("platform.supervisor_started", config=str(conf))
    return supervisor


def stop_supervisord(settings: Settings, timeout_s: float = 120.0) -> bool:
    """Stop every component (TERM, then KILL after its stop_wait_s) and supervisord itself;
    False when it was not running."""
    supervisor = Supervisor(settings)
    if not supervisor.running():
        return False
    pid_file = platform_dir(settings) / "supervisord.pid"
    pid = int(pid_file.read_text()) if pid_file.is_file() else None
    supervisor.shutdown()
    deadline = time.monotonic() + timeout_s
    while pid is not None and _alive(pid):
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord (pid {pid}) still runs {timeout_s:.0f} s after "
                                  "shutdown; see its log")
        time.sleep(0.1)
    log.info("platform.supervisor_stopped")
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
