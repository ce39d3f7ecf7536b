"""Where the project lives on disk: the repository root and its well-known folders."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"
DEFAULT_MLRUNS_DIR = PROJECT_ROOT / "mlruns"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"


def resolve_config_path(config: str | Path) -> Path:
    """Return the YAML file a `--config` value names: a path, or a name in `configs/`."""
    candidate = Path(config).expanduser()
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        return candidate
    return CONFIGS_DIR / f"{config}.yaml"
