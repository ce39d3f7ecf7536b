"""`evolora up | down | status`: the local platform under supervisord (registered by cli.main)."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from cli.common import ConfigOption, JsonOption, console, fail, settings_or_exit


def up_command(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Start Prefect (server, work pool, deployments, worker), MLflow, the service and, when
    memory.chroma_url is local, Chroma; each supervised. Returns once all are healthy."""
    from ops.platform import bring_up
    from ops.prefect_api import PrefectSetupError
    from ops.supervisor import SupervisorError

    settings = settings_or_exit(config)
    started = time.monotonic()
    try:
        status = bring_up(settings, config)
    except (SupervisorError, PrefectSetupError, FileNotFoundError) as exc:
        raise fail(str(exc), "see the logs under <data_dir>/logs; `evolora down` stops "
                   "what started") from None
    except TimeoutError as exc:
        raise fail(str(exc), "read the component's log; `evolora status` shows it again")\
            from None
    report = {**status.to_json(), "seconds": round(time.monotonic() - started, 1)}
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print_status(report)
    console.print(f"healthy in {report['seconds']:.0f} s; `evolora down` stops it all",
                  highlight=False)


def down_command(config: ConfigOption = None) -> None:
    """Stop every component (each gets its stop deadline) and the supervisor."""
    from ops.platform import bring_down
    from ops.supervisor import SupervisorError

    settings = settings_or_exit(config)
    try:
        stopped = bring_down(settings)
    except SupervisorError as exc:
        raise fail(str(exc)) from None
    console.print("stopped" if stopped else "nothing was running")


def status_command(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Each component's state, health, pid, uptime, crashes and recoveries, and the
    deployments with their next run. Exit code 1 when anything is unhealthy."""
    from ops.platform import platform_status

    settings = settings_or_exit(config)
    report = platform_status(settings, config).to_json()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_status(report)
    if not report["healthy"]:
        raise typer.Exit(code=1)


def print_status(report: dict) -> None:
    table = Table("component", "state", "health", "pid", "up", "crashes/recoveries", "url")
    for c in report["components"]:
        health = "[green]healthy[/]" if c["healthy"] else f"[red]{c['detail']}[/]"
        uptime = f"{c['uptime_s']:.0f} s" if c["uptime_s"] is not None else ""
        table.add_row(c["name"], c["state"], health, str(c["pid"] or ""), uptime,
                      f"{c['crashes']}/{c['recoveries']}", c["url"])
    console.print(table)
    for d in report["deployments"]:
        crons = ", ".join(f"{s['cron']} {s['timezone']}" for s in d["schedules"] if s["active"])
        console.print(f"deployment {d['name']}: {crons or 'on demand'}"
                      + (f", next run {d['next_run']}" if d["next_run"] else ""),
                      highlight=False)
    if not report["supervisor"]:
        console.print("the supervisor is not running: `evolora up` starts the platform")
