"""The `evolora` command line: one Typer app, one sub-app per resource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from evolora.logs import configure_logging
from evolora.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    name="evolora",
    help="A self-improving local LLM agent: data, LoRA training, evolution, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Prepare and list base models (offline, from packaged GGUFs).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="A name in configs/ (tiny, demo, default) or a YAML "
                 "path; default $EVOLORA_CONFIG or `default`."),
]


class CliState:
    """Options given before the command, shared by every command."""

    log_json: bool = False
    log_level: str = "INFO"


state = CliState()


@app.callback()
def main(
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """evolora: make a small local model better at your work, every night."""
    state.log_json, state.log_level = log_json, log_level.upper()
    configure_logging(json_output=log_json, level=state.log_level)


def fail(message: str, fix: str = "") -> typer.Exit:
    """Print a one-line cause (and fix) on stderr; return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if fix:
        err_console.print(f"[bold]fix:[/] {fix}", highlight=False)
    return typer.Exit(code=2)


def settings_or_exit(config: str | None) -> Settings:
    """Load the settings, or exit 2 listing every problem of the config."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from None


@models_app.command("prepare")
def models_prepare(
    name: Annotated[str | None, typer.Argument(help="Packaged model; default: the config's "
                                               "model.base.")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Turn a packaged GGUF into a bf16 Hugging Face folder (idempotent)."""
    from evolora.models import PACKAGED_MODELS, ModelError, prepare_model

    settings = settings_or_exit(config)
    target = name or settings.model.base
    if target not in PACKAGED_MODELS:
        if Path(target).expanduser().is_dir():
            console.print(f"{target} is a local folder: nothing to prepare, it is used as is.")
            return
        raise fail(f"{target!r} is not a packaged model",
                   f"use one of {', '.join(PACKAGED_MODELS)}, or set model.base to a folder")
    try:
        prepared = prepare_model(target, settings.paths.models_dir, settings.model.dtype)
    except ModelError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(prepared.to_json(), indent=2))
        return
    verb = "already prepared" if prepared.skipped else "prepared"
    print(f"{prepared.name} {verb} at {prepared.path}\n"
          f"  weights sha256 {prepared.weights_sha256}\n"
          f"  source  sha256 {prepared.source_sha256}")


@models_app.command("list")
def models_list(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show packaged models and which are prepared."""
    from evolora.models import PACKAGED_MODELS, list_models

    settings = settings_or_exit(config)
    prepared = {m.name: m for m in list_models(settings.paths.models_dir)}
    if as_json:
        print(json.dumps({
            "prepared": [m.to_json() for m in prepared.values()],
            "packaged": list(PACKAGED_MODELS),
        }, indent=2))
        return
    table = Table("name", "prepared", "size", "weights sha256", "path")
    for name in dict.fromkeys([*PACKAGED_MODELS, *prepared]):
        model = prepared.get(name)
        if model:
            table.add_row(name, "yes", f"{model.size_bytes / 1e6:.0f} MB",
                          model.weights_sha256[:16], str(model.path))
        else:
            table.add_row(name, "no", "", "", f"evolora models prepare {name}")
    console.print(table)


@app.command()
def doctor(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check Python, packages, device, GPU, RAM, disk, model, MLflow, Prefect and teachers."""
    from evolora.doctor import checks_as_json, run_checks

    settings = settings_or_exit(config)
    checks = run_checks(settings)
    if as_json:
        print(json.dumps({"config": settings.name, "checks": checks_as_json(checks)}, indent=2))
    else:
        marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}
        console.print(f"evolora doctor (config: {settings.name})")
        for check in checks:
            line = f"{marks[check.status]} {check.name:<18} {check.detail}"
            if check.fix:
                line += f"\n     {'':<18} fix: {check.fix}"
            console.print(line, highlight=False)
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(code=1)


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the resolved settings (YAML + EVOLORA_* variables) as JSON, secrets masked."""
    settings = settings_or_exit(config)
    print(json.dumps(settings.resolved_dict(), indent=2))


if __name__ == "__main__":
    app()
