"""Offline-by-default switches, applied before any hub-aware library is imported."""

from __future__ import annotations

import os

# Every library in the stack that could reach a hub or phone home, switched off unless the
# user has set the variable themselves (an online user may export HF_HUB_OFFLINE=0).
OFFLINE_DEFAULTS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow resets its logger level on import; this keeps its table-creation chatter out.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


def apply_offline_defaults() -> None:
    """Set each offline/telemetry switch that the environment does not already set."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
