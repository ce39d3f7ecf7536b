"""`evaluate` metric modules that ship with evolora (loaded from these folders, offline)."""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """The folder `evaluate.load` takes for one of our metrics."""
    return str(METRICS_DIR / name)
