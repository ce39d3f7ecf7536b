"""Listing registered versions: what the CLI's `registry list` and `registry show` print."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evolora.vocabulary import CANDIDATE_TAG, REGISTERED_MODEL_NAME
from tasks.registry.versions import (
    OVERALL,
    version_checksums,
    version_gate,
    version_genealogy,
    version_metrics,
)


def genealogy_summary(genealogy: dict[str, Any]) -> dict[str, Any]:
    """The few genealogy fields a listing shows: member, generation, parents, recipe type."""
    recipe = genealogy.get("recipe") if isinstance(genealogy.get("recipe"), dict) else {}
    summary = {
        "member": genealogy.get("member"),
        "generation": genealogy.get("generation"),
        "parents": genealogy.get("parents"),
        "combination_type": genealogy.get("combination_type") or recipe.get("combination_type"),
    }
    return {k: v for k, v in summary.items() if v not in (None, "", [])}


def describe_version(version: ModelVersion) -> dict[str, Any]:
    """Everything recorded about a version, as JSON-able data."""
    return {
        "version": str(version.version),
        "aliases": sorted(version.aliases or []),
        "status": version.status,
        "candidate": version.tags.get(CANDIDATE_TAG),
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000,
                                          timezone.utc).isoformat(timespec="seconds"),
        "run_id": version.run_id,
        "source": version.source,
        "metrics": version_metrics(version),
        "genealogy": version_genealogy(version),
        "checksums": version_checksums(version),
        "gate": version_gate(version),
    }


def list_versions(client: MlflowClient, model_name: str = REGISTERED_MODEL_NAME
                  ) -> list[dict[str, Any]]:
    """Every version, newest first: aliases, test_accuracy, created, run_id, genealogy."""
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for version in client.search_model_versions(f"name = '{model_name}'"):
        described = describe_version(version)
        rows.append({
            "version": str(version.version),
            "aliases": sorted(by_version.get(str(version.version), [])),
            "test_accuracy": described["metrics"].get(OVERALL),
            "created": described["created"],
            "run_id": version.run_id,
            "candidate": described["candidate"],
            "genealogy": genealogy_summary(described["genealogy"]),
            "gate": described["gate"].get("decision"),
        })
    return sorted(rows, key=lambda row: int(row["version"]), reverse=True)
