"""What every `evolora` sub-command shares: consoles, option types, error exits, settings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from evolora.settings import ConfigError, Settings, load_settings

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
