"""Splits as files: the row schema, content hashes, atomic saves, validated loads, MLflow inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, overload

import datasets

from tasks.data.skills import LEVELS, SKILLS

REQUIRED_TEXT_FIELDS = ("id", "skill", "level", "question", "answer", "source")

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "skill": datasets.Value("string"),
        "level": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "tool_calls": [
            {
                "tool": datasets.Value("string"),
                "argument": datasets.Value("string"),
                "observation": datasets.Value("string"),
            }
        ],
        "source": datasets.Value("string"),
    }
)


def dataset_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the canonical JSON of the rows, in order (key order does not matter)."""
    digest = hashlib.sha256()
    for row in rows:
        line = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def save_split(
    root: Path, name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> tuple[Path, str]:
    """Save `rows` as split `name` under `root/<name>-<hash12>/`, atomically, with a manifest
    (plus `extra`); returns the folder and the content hash. An identical saved one is kept.
    """
    content_hash = dataset_hash(rows)
    final = root / f"{name}-{content_hash[:12]}"
    if final.exists():
        return final, content_hash
    staging = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        # One shard always: datasets writes zero shards for an empty split and cannot reload it.
        _to_dataset(rows).save_to_disk(str(staging), num_shards=1)
        manifest = {
            "name": name,
            "content_hash": content_hash,
            "rows": len(rows),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.rename(staging, final)  # atomic on one filesystem: readers see all or nothing
        except OSError:
            if not final.exists():
                raise
            # Another process saved the same content first; theirs is identical.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final, content_hash


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    # from_list([]) drops the schema; an empty split (eval_per_skill=0) must keep its columns.
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def validate_row(row: Mapping[str, Any]) -> list[str]:
    """Every problem with one row, each naming its field (empty: the row is fine)."""
    problems = []
    for name in REQUIRED_TEXT_FIELDS:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"field {name!r} must be a non-empty string (got {value!r})")
    if isinstance(row.get("skill"), str) and row["skill"] and row["skill"] not in SKILLS:
        problems.append(f"field 'skill' is {row['skill']!r}; known: {', '.join(SKILLS)}")
    if isinstance(row.get("level"), str) and row["level"] and row["level"] not in LEVELS:
        problems.append(f"field 'level' is {row['level']!r}; expected easy or hard")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append("field 'messages' must be a non-empty list")
    elif not all(
        isinstance(m, Mapping) and m.get("role") and isinstance(m.get("content"), str)
        for m in messages
    ):
        problems.append("field 'messages' has an entry without role and content")
    elif messages[-1].get("role") != "assistant":
        problems.append("field 'messages' must end with an assistant turn")
    if not isinstance(row.get("tool_calls"), list):
        problems.append("field 'tool_calls' must be a list")
    return problems


@overload
def load_split(path: str | Path, *, skip_invalid: Literal[False] = False) -> datasets.Dataset: ...
@overload
def load_split(
    path: str | Path, *, skip_invalid: Literal[True]
) -> tuple[datasets.Dataset, int]: ...
def load_split(
    path: str | Path, *, skip_invalid: bool = False
) -> datasets.Dataset | tuple[datasets.Dataset, int]:
    """A saved split, every row validated.

    A broken row raises ValueError naming each bad row's index and field (all of them, at
    once). With `skip_invalid=True` the broken rows are dropped and `(dataset, n_skipped)`
    is returned instead.
    """
    dataset = datasets.Dataset.load_from_disk(str(path))
    bad: dict[int, list[str]] = {}
    for index, row in enumerate(dataset):
        problems = validate_row(row)
        if problems:
            bad[index] = problems
    if skip_invalid:
        if bad:
            dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
        return dataset, len(bad)
    if bad:
        lines = [
            f"  row {index}: {problem}" for index, problems in bad.items() for problem in problems
        ]
        shown = "\n".join(lines[:20]) + (
            f"\n  ... {len(lines) - 20} more" if len(lines) > 20 else ""
        )
        raise ValueError(
            f"{len(bad)} invalid row(s) in split {path}:\n{shown}\n"
            "(fix: regenerate the split, or load it with skip_invalid=True to drop them)"
        )
    return dataset


# ---------------------------------------------------------------------------- MLflow


def log_dataset_to_mlflow(
    dataset: datasets.Dataset,
    name: str,
    content_hash: str,
    context: str,
    source: str | Path | None = None,
) -> None:
    """Log `dataset` as an input of the active MLflow run, named and digested by its hash.

    MLflow keeps digests of at most 36 characters; the full sha256 goes into an input tag.
    """
    import mlflow
    import mlflow.data

    kwargs: dict[str, Any] = {"name": name, "digest": content_hash[:32]}
    if source is not None:
        kwargs["source"] = str(source)
    with warnings.catch_warnings():
        # A local path matches two equivalent local source kinds; MLflow warns and picks one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        mlflow_dataset = mlflow.data.from_huggingface(dataset, **kwargs)
    mlflow.log_input(mlflow_dataset, context=context, tags={"evolora.content_hash": content_hash})
