"""What every `evolora` sub-command shares: consoles, option types, error exits, settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from evolora.logs import configure_logging, get_logger, quiet_libraries
from evolora.progress import reporting, terminal_progress
from evolora.settings import ConfigError, Settings, load_settings

T = TypeVar("T")

console = Console()
# Errors are printed verbatim (no markup) and unwrapped, so paths and fixes stay whole.
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="A name in configs/ (tiny, demo, default) or a YAML "
                 "path; default $EVOLORA_CONFIG or `default`."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class CliState:
    """Options given before the command, shared by every command."""

    log_json: bool = False
    log_level: str = "INFO"


state = CliState()


def fail(message: str, fix: str = "") -> typer.Exit:
    """Print a one-line cause (and fix) on stderr; return the Exit to raise."""
    err_console.print(f"error: {message}", style="bold red")
    if fix:
        err_console.print(f"fix: {fix}")
    return typer.Exit(code=2)


def settings_or_exit(config: str | None) -> Settings:
    """Load the settings, or exit 2 listing every problem of the config."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(code=2) from None


def log_file_path(settings: Settings) -> Path:
    """Where a long command writes its full log: `<paths.data_dir>/logs/evolora.log`."""
    return settings.paths.data_dir / "logs" / "evolora.log"


def log_to_file(settings: Settings) -> Path:
    """Send library output and every event to the log file, and say where it is.

    Called at the start of the long commands (train, cycle, data generate, eval): the
    terminal keeps our own events, errors, the progress display and the result.
    """
    path = log_file_path(settings)
    configure_logging(json_output=state.log_json, level=state.log_level, log_file=path)
    quiet_libraries()
    if state.log_json:
        get_logger("cli").info("log.file", path=str(path))
    else:
        err_console.print(f"full log: {path}")
    return path


def run_flow(settings: Settings, call: Callable[[], T]) -> T:
    """A flow run as a long command: the log file, one progress display on stderr (a live
    line on a terminal; one plain line per finished stage in a pipe or CI, JSON lines with
    --log-json), and a training plan that cannot fit reported as a one-line error."""
    from tasks.train import DoesNotFit

    log_to_file(settings)
    try:
        with reporting(terminal_progress(json_lines=state.log_json)):
            return call()
    except DoesNotFit as exc:
        raise fail(str(exc)) from None
