"""Where the platform (`evolora up`) keeps its files, and the crash/recovery record that the
supervisor's event listener writes and the service's metrics read.

Everything lives under `<paths.data_dir>/platform/`: the supervisor's config, socket and pid
file, Prefect's home (its SQLite database), and `recoveries.json`. Logs go to
`<paths.data_dir>/logs/<component>.log`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evolora.settings import Settings

RECOVERIES_FILE = "recoveries.json"


def platform_dir(settings: Settings) -> Path:
    """`<data_dir>/platform`, absolute (the supervisor changes directory)."""
    return (Path(settings.paths.data_dir) / "platform").resolve()


def logs_dir(settings: Settings) -> Path:
    return (Path(settings.paths.data_dir) / "logs").resolve()


def prefect_home(settings: Settings) -> Path:
    """PREFECT_HOME of the platform's Prefect server: its database and settings."""
    return platform_dir(settings) / "prefect"


def recoveries_path(settings: Settings) -> Path:
    return platform_dir(settings) / RECOVERIES_FILE


def read_recoveries(path: Path) -> dict[str, dict[str, Any]]:
    """Per component: crashes, recoveries, last_crash_at, last_recovery_s ({} if none yet)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_recoveries(path: Path, record: dict[str, dict[str, Any]]) -> None:
    """Replace the record atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(path)
