"""The MLflow model registry: register adapters with genealogy and checksums, gate, promote.

    from tasks.registry import Candidate, register_candidate, promote_if_better

`versions` registers a candidate and reads what a version carries (checksums, test metrics,
genealogy), `promotion` gates a challenger and moves the `champion` / `previous` aliases,
`listing` describes versions for the CLI, `export` writes a version as an Ollama folder
(imported from `tasks.registry.export` only: it needs the agent's prompt and the GGUF tools,
which the registry's other users do not). The alias and model names are in
`evolora.vocabulary`.
"""

from tasks.registry.listing import describe_version, list_versions
from tasks.registry.promotion import GateDecision, gate, promote, promote_if_better, rollback
from tasks.registry.versions import (
    Candidate,
    ChecksumMismatch,
    RegistryError,
    download_version,
    get_alias,
    get_version,
    register_candidate,
    version_metrics,
)

__all__ = [
    "Candidate",
    "ChecksumMismatch",
    "GateDecision",
    "RegistryError",
    "describe_version",
    "download_version",
    "gate",
    "get_alias",
    "get_version",
    "list_versions",
    "promote",
    "promote_if_better",
    "register_candidate",
    "rollback",
    "version_metrics",
]
