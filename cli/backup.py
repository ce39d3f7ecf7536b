"""`evolora backup create PATH | restore PATH` (registered by cli.main)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOption, JsonOption, console, fail, settings_or_exit

backup_app = typer.Typer(help="Back up and restore keys, sessions, memories, the registry, "
                         "adapters and the frozen test sets.", no_args_is_help=True)
ArchiveArg = Annotated[Path, typer.Argument(help="The archive (.tar.gz).")]


@backup_app.command("create")
def backup_create(path: ArchiveArg, config: ConfigOption = None,
                  as_json: JsonOption = False) -> None:
    """Write one archive with a manifest of checksums; safe while everything runs."""
    from ops.backup import BackupError, create_backup

    settings = settings_or_exit(config)
    try:
        report = create_backup(settings, path)
    except BackupError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    console.print(f"backup {report.path}: {report.files} files, {report.bytes / 1e6:.1f} MB, "
                  f"{report.seconds:.1f} s", highlight=False)


@backup_app.command("restore")
def backup_restore(path: ArchiveArg, config: ConfigOption = None,
                   as_json: JsonOption = False) -> None:
    """Restore an archive into the config's empty data and MLflow folders, every file
    checked first; a corrupt or partial archive is refused and nothing is written."""
    from ops.backup import BackupError, restore_backup

    settings = settings_or_exit(config)
    try:
        report = restore_backup(settings, path)
    except BackupError as exc:
        raise fail(str(exc), "take the backup again, or restore another archive") from None
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    console.print(f"restored {report.files} files into {settings.paths.data_dir} and "
                  f"{settings.paths.mlruns_dir} ({report.seconds:.1f} s)", highlight=False)
