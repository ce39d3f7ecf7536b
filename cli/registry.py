"""`evolora registry ...`: list, show, promote and roll back registered adapters.

Mounted by cli/main.py with `app.add_typer(registry_app, name="registry")`.
Exit codes: 0 done, 1 the gate refused a promotion, 2 an error (cause and fix on stderr).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.common import ConfigOption, JsonOption, console, fail, settings_or_exit
from evolora.vocabulary import CHAMPION, PREVIOUS, REGISTERED_MODEL_NAME

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from evolora.settings import Settings


registry_app = typer.Typer(help="The MLflow model registry: versions, champion, rollback.",
                           no_args_is_help=True)

ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="Registered model name; default: the config's "
    f"evolution.registry_model_name (by default {REGISTERED_MODEL_NAME}).")]


def registry_client(config: str | None, model: str | None
                     ) -> tuple[Settings, MlflowClient, str]:
    """The settings, an MLflow client on the config's store, and the model name."""
    from evolora.tracking import setup_mlflow

    # The progress bars of artifact downloads would interleave with the command's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = settings_or_exit(config)
    try:
        client = setup_mlflow(settings)
    except Exception as exc:  # any store failure: report it on one line, not a traceback
        raise fail(f"cannot open the MLflow store {settings.paths.resolved_tracking_uri}: "
                   f"{exc}", "check paths.tracking_uri / paths.mlruns_dir "
                   "(`evolora doctor`)") from None
    name = model or settings.evolution.registry_model_name
    return settings, client, name


def registry_error(exc: Exception) -> typer.Exit:
    """A RegistryError (or MLflow error) as exit 2 with its cause and fix."""

    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return fail(first_line, getattr(exc, "fix", ""))


@registry_app.command("list")
def registry_list(config: ConfigOption = None, model: ModelOption = None,
                  as_json: JsonOption = False) -> None:
    """Every registered version, newest first, with aliases and test accuracy."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import list_versions

    _, client, name = registry_client(config, model)
    try:
        rows = list_versions(client, name)
    except MlflowException as exc:
        raise registry_error(exc) from None
    if as_json:
        print(json.dumps({"model": name, "versions": rows}, indent=2))
        return
    if not rows:
        console.print(f"no versions of {name} yet; `evolora cycle` registers its best "
                      "candidate", highlight=False)
        return
    table = Table("version", "aliases", "test acc", "created", "run", "candidate", "genealogy",
                  "gate", title=name)
    for row in rows:
        accuracy = row["test_accuracy"]
        table.add_row(row["version"], ", ".join(row["aliases"]),
                      "" if accuracy is None else f"{accuracy:.3f}", row["created"],
                      (row["run_id"] or "")[:8], row["candidate"] or "",
                      json.dumps(row["genealogy"]), row["gate"] or "")
    console.print(table)


@registry_app.command("show")
def registry_show(
    ref: Annotated[str, typer.Argument(help="A version number, `champion` or `previous`.")],
    config: ConfigOption = None, model: ModelOption = None, as_json: JsonOption = False,
) -> None:
    """One version: genealogy, metrics, checksums, aliases and the last gate decision."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import RegistryError, describe_version, get_version

    _, client, name = registry_client(config, model)
    try:
        described = describe_version(get_version(client, name, ref))
    except (RegistryError, MlflowException) as exc:
        raise registry_error(exc) from None
    if as_json:
        print(json.dumps({"model": name, **described}, indent=2))
        return
    aliases = ", ".join(described["aliases"]) or "none"
    console.print(f"{name} v{described['version']} ({described['status']}); aliases: {aliases}\n"
                  f"  candidate {described['candidate']}, run {described['run_id']}, "
                  f"created {described['created']}\n  source {described['source']}",
                  highlight=False)
    for section in ("genealogy", "metrics", "checksums"):
        table = Table("key", "value", title=section)
        for key, value in sorted(described[section].items()):
            shown = f"{value:.4f}" if isinstance(value, float) else (
                value if isinstance(value, str) else json.dumps(value))
            table.add_row(key, shown)
        console.print(table)
    gate = described["gate"]
    if gate:
        console.print(f"gate: {gate['decision']} at {gate['at']} (vs {gate['champion']})",
                      highlight=False)
        for reason in gate["reasons"]:
            console.print(f"  - {reason}", highlight=False)


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="The version number to promote.")],
    force: Annotated[bool, typer.Option("--force", help="Skip the quality gate (never the "
                                        "checksum check).")] = False,
    config: ConfigOption = None, model: ModelOption = None, as_json: JsonOption = False,
) -> None:
    """Make VERSION the champion if it passes the gate against the current one."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import RegistryError, promote

    settings, client, name = registry_client(config, model)
    evo = settings.evolution
    try:
        decision = promote(client, name, version, force=force, margin=evo.promotion_margin,
                           tolerance=evo.regression_tolerance)
    except (RegistryError, MlflowException) as exc:
        raise registry_error(exc) from None
    if as_json:
        print(json.dumps({"model": name, "version": version, **decision.to_json()}, indent=2))
    else:
        verdict = "promoted" if decision.promote else "refused"
        console.print(f"{name} v{version}: {verdict} (champion was {decision.champion})",
                      highlight=False)
        for reason in decision.reasons:
            console.print(f"  - {reason}", highlight=False)
    if not decision.promote:
        raise typer.Exit(code=1)


@registry_app.command("rollback")
def registry_rollback(config: ConfigOption = None, model: ModelOption = None,
                      as_json: JsonOption = False) -> None:
    """Make the previous champion the champion again (a second rollback undoes it)."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import RegistryError, get_alias, rollback

    _, client, name = registry_client(config, model)
    try:
        old = get_alias(client, name, CHAMPION)
        champion = rollback(client, name)
        previous = get_alias(client, name, PREVIOUS)
    except (RegistryError, MlflowException) as exc:
        raise registry_error(exc) from None
    # Versions as strings, as MLflow's REST API writes them (the SQL store returns ints).
    result = {"model": name, "champion": str(champion.version),
              "previous": str(previous.version) if previous else None,
              "rolled_back_from": str(old.version) if old else None}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"{name}: champion is now v{champion.version} (was "
                  f"v{result['rolled_back_from']}); previous is v{result['previous']}",
                  highlight=False)
