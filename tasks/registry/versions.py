"""Registered adapter versions: register a candidate, the tags it carries, fetch it verified.

Every registered version points at its run's `adapter/` artifact and carries tags:
`evolora.<key>` for its genealogy, `evolora.sha256.<file>` for each file and
`evolora.metric.<name>` for its frozen test-set scores. Aliases (`champion`, `previous`) are
read here and moved by `tasks.registry.promotion`.

Checksum failures always raise `ChecksumMismatch` (after tagging the version as refused): a
corrupted or tampered adapter is an incident that must stop a flow, not an ordinary "worse
challenger" verdict that a flow logs and moves on from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evolora.models import sha256_file
from evolora.vocabulary import CANDIDATE_TAG, CHAMPION, REGISTERED_MODEL_NAME

ARTIFACT_PATH = "adapter"
# The headline test metric: the gate compares it, listings show it.
OVERALL = "test_accuracy"

TAG_PREFIX = "evolora."
SHA_PREFIX = "evolora.sha256."
METRIC_PREFIX = "evolora.metric."
JSON_KEYS_TAG = "evolora.json_keys"
GATE_TAG = "evolora.gate"
GATE_REASONS_TAG = "evolora.gate.reasons"
GATE_CHAMPION_TAG = "evolora.gate.champion"
GATE_AT_TAG = "evolora.gate.at"
ROLLBACK_TAG = "evolora.rolled_back_to_at"
# Each test problem's outcome ({"split_hash": ..., "outcomes": {id: solved}}): what the gate
# pairs a challenger against, problem by problem. Registry tag values hold 100,000 characters,
# about 2,500 problems.
OUTCOMES_TAG = "evolora.test_outcomes"
# Tag names the registry writes itself: a genealogy key must not shadow them.
_RESERVED = tuple(tag.removeprefix(TAG_PREFIX) for tag in (
    SHA_PREFIX, METRIC_PREFIX, CANDIDATE_TAG, JSON_KEYS_TAG, GATE_TAG, ROLLBACK_TAG,
    OUTCOMES_TAG))


class RegistryError(RuntimeError):
    """A registry operation that cannot go on; `fix` says what to do about it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class ChecksumMismatch(RegistryError):
    """An adapter's files differ from their recorded sha256 (or are missing / unexpected)."""

    def __init__(self, message: str, problems: list[str], fix: str = "") -> None:
        super().__init__(f"{message}: {'; '.join(problems)}", fix)
        self.problems = problems


@dataclass
class Candidate:
    """An adapter to register: its folder, the run that made it, test metrics, genealogy."""

    name: str
    adapter_dir: Path
    run_id: str
    metrics: dict[str, float]
    genealogy: dict[str, Any] = field(default_factory=dict)
    # The base model's GGUF: when set, the version also carries the adapter as GGUF LoRA
    # (`adapter.gguf`, what the llama.cpp engine and `evolora export ollama` load).
    base_gguf: Path | None = None
    # Each test problem's outcome and the test set's content hash (for the paired gate).
    outcomes: dict[str, bool] | None = None
    split_hash: str | None = None


# --- checksums ------------------------------------------------------------------------------


def files_sha256(folder: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def compare_checksums(folder: Path, expected: dict[str, str]) -> list[str]:
    """Problems with `folder` against `expected` checksums (empty: the files match)."""
    actual = files_sha256(folder)
    problems = [f"{name}: missing" for name in sorted(expected) if name not in actual]
    problems += [f"{name}: sha256 {actual[name][:12]} != recorded {sha[:12]}"
                 for name, sha in sorted(expected.items())
                 if name in actual and actual[name] != sha]
    # An extra file could be an injected payload (e.g. a pickle the loader would pick up).
    problems += [f"{name}: not in the recorded checksums" for name in sorted(actual)
                 if name not in expected]
    return problems


# --- reading a version's tags -----------------------------------------------------------------


def version_checksums(version: ModelVersion) -> dict[str, str]:
    """File -> sha256 recorded when the version was registered."""
    return {k.removeprefix(SHA_PREFIX): v for k, v in version.tags.items()
            if k.startswith(SHA_PREFIX)}


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The version's test-set metrics (`test_accuracy`, `test_accuracy_<skill>`, ...)."""
    return {k.removeprefix(METRIC_PREFIX): float(v) for k, v in version.tags.items()
            if k.startswith(METRIC_PREFIX)}


def version_outcomes(version: ModelVersion) -> tuple[str, dict[str, bool]] | None:
    """(test set hash, problem id -> solved) the version was scored with, if recorded."""
    raw = version.tags.get(OUTCOMES_TAG)
    if not raw:
        return None
    data = json.loads(raw)
    return str(data["split_hash"]), {k: bool(v) for k, v in data["outcomes"].items()}


def outcomes_tag(split_hash: str, outcomes: dict[str, bool]) -> str:
    """The OUTCOMES_TAG value: compact JSON, solved as 1 / 0."""
    return json.dumps({"split_hash": split_hash,
                       "outcomes": {k: int(v) for k, v in sorted(outcomes.items())}},
                      separators=(",", ":"))


def record_test_scores(client: MlflowClient, model_name: str, version: str,
                       metrics: dict[str, float], outcomes: dict[str, bool],
                       split_hash: str) -> None:
    """Replace a version's test metrics and outcomes with a scoring on another test set
    (the champion, re-scored once when the frozen test set changes)."""
    current = client.get_model_version(model_name, version)
    for tag in [t for t in current.tags if t.startswith(METRIC_PREFIX)]:
        client.delete_model_version_tag(model_name, version, tag)
    for name, value in metrics.items():
        client.set_model_version_tag(model_name, version, f"{METRIC_PREFIX}{name}",
                                     repr(float(value)))
    client.set_model_version_tag(model_name, version, OUTCOMES_TAG,
                                 outcomes_tag(split_hash, outcomes))


def version_genealogy(version: ModelVersion) -> dict[str, Any]:
    """The genealogy the version was registered with, non-string values decoded from JSON."""
    json_keys = set(json.loads(version.tags.get(JSON_KEYS_TAG, "[]")))
    genealogy: dict[str, Any] = {}
    for tag, value in version.tags.items():
        key = tag.removeprefix(TAG_PREFIX)
        if not tag.startswith(TAG_PREFIX) or key.startswith(_RESERVED):
            continue
        genealogy[key] = json.loads(value) if key in json_keys else value
    return genealogy


def version_gate(version: ModelVersion) -> dict[str, Any]:
    """The last gate decision recorded on the version (empty if never gated)."""
    if GATE_TAG not in version.tags:
        return {}
    return {"decision": version.tags[GATE_TAG],
            "reasons": json.loads(version.tags.get(GATE_REASONS_TAG, "[]")),
            "champion": version.tags.get(GATE_CHAMPION_TAG) or None,
            "at": version.tags.get(GATE_AT_TAG)}


def get_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None (also when the model does not exist yet)."""
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    # Read through the model's alias map: a missing alias is an ordinary answer here, while
    # get_model_version_by_alias reports it as a generic INVALID_PARAMETER_VALUE error.
    version = aliases.get(alias)
    return client.get_model_version(model_name, version) if version else None


def get_version(client: MlflowClient, model_name: str, ref: str) -> ModelVersion:
    """A version by number or alias (`3`, `champion`, `previous`); RegistryError if none."""
    if ref.isdigit():
        try:
            return client.get_model_version(model_name, ref)
        except MlflowException:
            raise RegistryError(f"model {model_name!r} has no version {ref}",
                                "see the versions with `evolora registry list`") from None
    version = get_alias(client, model_name, ref)
    if version is None:
        raise RegistryError(f"model {model_name!r} has no version with alias {ref!r}",
                            "pass a version number, or promote one first") from None
    return version


# --- register and download --------------------------------------------------------------------


def register_candidate(client: MlflowClient, candidate: Candidate,
                       model_name: str = REGISTERED_MODEL_NAME,
                       timeout_s: float = 60.0) -> ModelVersion:
    """A READY model version of the candidate's adapter, tagged with genealogy and checksums.

    Idempotent: registering the same files from the same run again returns the existing
    version, so a resumed flow does not pile up duplicates.
    """
    # Imported here: tasks.train.trainer pulls in torch and transformers (seconds), which the
    # read-only registry commands never need.
    from tasks.train.trainer import verify_adapter_files

    adapter_dir = Path(candidate.adapter_dir)
    if not adapter_dir.is_dir():
        raise RegistryError(f"no adapter folder at {adapter_dir}",
                            "pass the folder train_adapter or the merge wrote")
    try:
        run = client.get_run(candidate.run_id)
    except MlflowException:
        raise RegistryError(f"no MLflow run {candidate.run_id!r} in this store",
                            "pass the id of the run that trained or merged the adapter") from None
    bad = verify_adapter_files(adapter_dir)
    if bad:
        raise ChecksumMismatch(f"adapter {adapter_dir} does not match its manifest",
                               [f"{name}: differs or missing" for name in bad],
                               "retrain or re-merge the adapter; never edit its files by hand")
    if candidate.base_gguf is not None:
        add_adapter_gguf(adapter_dir, candidate.base_gguf)
    checksums = files_sha256(adapter_dir)
    _ensure_run_artifact(client, candidate.run_id, adapter_dir, checksums)

    existing = _find_registered(client, model_name, candidate.run_id, checksums)
    if existing is not None:
        return existing
    try:
        client.create_registered_model(model_name, description="evolora LoRA adapters; the "
                                       f"`{CHAMPION}` alias is served.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{run.info.artifact_uri}/{ARTIFACT_PATH}"
    version = client.create_model_version(model_name, source=source, run_id=candidate.run_id,
                                          tags=_version_tags(candidate, checksums))
    return _wait_until_ready(client, model_name, version.version, timeout_s)


# The adapter's GGUF LoRA and its checksum file (engines/gguf_lora.py names them).
GGUF_FILES = ("adapter.gguf", "adapter.gguf.sha256")


def add_adapter_gguf(adapter_dir: Path, base_gguf: Path) -> Path:
    """`adapter.gguf` (+ its .sha256) beside the PEFT files: kept if it verifies, else
    converted; an adapter llama.cpp cannot run raises AdapterConversionError."""
    from engines.gguf_lora import ADAPTER_GGUF_NAME, convert_adapter, verify_checksum

    target = adapter_dir / ADAPTER_GGUF_NAME
    if verify_checksum(target):
        return target
    return convert_adapter(adapter_dir, base_gguf, target)


def _version_tags(candidate: Candidate, checksums: dict[str, str]) -> dict[str, str]:
    clashes = [k for k in candidate.genealogy if str(k).startswith(_RESERVED)]
    if clashes:
        raise RegistryError(f"genealogy keys {clashes} clash with the registry's own tags",
                            f"rename them (reserved prefixes: {', '.join(_RESERVED)})")
    tags = {CANDIDATE_TAG: candidate.name}
    json_keys = []
    for key, value in candidate.genealogy.items():
        if not isinstance(value, str):
            json_keys.append(key)
            value = json.dumps(value, sort_keys=True, default=str)
        tags[f"{TAG_PREFIX}{key}"] = value
    # Record which values are JSON, so a string like "3" reads back as a string.
    tags[JSON_KEYS_TAG] = json.dumps(sorted(json_keys))
    tags.update({f"{SHA_PREFIX}{name}": sha for name, sha in checksums.items()})
    tags.update({f"{METRIC_PREFIX}{name}": repr(float(value))
                 for name, value in candidate.metrics.items()})
    if candidate.outcomes is not None and candidate.split_hash:
        tags[OUTCOMES_TAG] = outcomes_tag(candidate.split_hash, candidate.outcomes)
    return tags


def _ensure_run_artifact(client: MlflowClient, run_id: str, adapter_dir: Path,
                         checksums: dict[str, str]) -> None:
    """Log the folder as the run's `adapter/` artifact, or check the one already there."""
    if not client.list_artifacts(run_id, ARTIFACT_PATH):
        client.log_artifacts(run_id, str(adapter_dir), artifact_path=ARTIFACT_PATH)
        return
    # The version's tags describe the local folder; the version points at the run's copy.
    # They must be the same files, or the tags would vouch for something else.
    with _scratch_dir() as scratch:
        logged = Path(client.download_artifacts(run_id, ARTIFACT_PATH, str(scratch)))
        problems = compare_checksums(logged, checksums)
    # The training run logged the PEFT files; the GGUF form made at registration joins them.
    derived = [name for name in GGUF_FILES if f"{name}: missing" in problems]
    if derived and len(derived) == len(problems):
        for name in derived:
            client.log_artifact(run_id, str(adapter_dir / name), artifact_path=ARTIFACT_PATH)
        return
    if problems:
        raise ChecksumMismatch(
            f"run {run_id} already has an `{ARTIFACT_PATH}/` artifact with other files than "
            f"{adapter_dir}", problems,
            "register the candidate with the run that logged this adapter (its manifest's "
            "mlflow_run_id), or a run without an adapter artifact")


def _find_registered(client: MlflowClient, model_name: str, run_id: str,
                     checksums: dict[str, str]) -> ModelVersion | None:
    try:
        versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    except MlflowException:
        return None  # the model does not exist yet
    for version in versions:
        if version_checksums(version) == checksums and version.status == "READY":
            return client.get_model_version(model_name, version.version)
    return None


def _wait_until_ready(client: MlflowClient, model_name: str, version: str,
                      timeout_s: float) -> ModelVersion:
    deadline = time.monotonic() + timeout_s
    while True:
        current = client.get_model_version(model_name, version)
        if current.status == "READY":
            return current
        if current.status == "FAILED_REGISTRATION":
            raise RegistryError(f"version {version} of {model_name!r} failed to register: "
                                f"{current.status_message}", "check the MLflow server's log")
        if time.monotonic() > deadline:
            raise RegistryError(f"version {version} of {model_name!r} is still "
                                f"{current.status} after {timeout_s:.0f} s",
                                "check the MLflow server, then register again")
        time.sleep(0.2)


def download_version(client: MlflowClient, model_name: str, version: str, dest: Path) -> Path:
    """`dest`, holding the version's adapter files, each checked against its recorded sha256.

    Files are downloaded beside `dest` and moved into place only once verified, so `dest`
    never holds unverified files; on a mismatch they are deleted and ChecksumMismatch raised.
    """
    model_version = client.get_model_version(model_name, version)
    expected = version_checksums(model_version)
    if not expected:
        raise ChecksumMismatch(f"version {version} of {model_name!r} has no recorded checksums",
                               ["no evolora.sha256.* tags"],
                               "register adapters with tasks.registry.register_candidate")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise RegistryError(f"{dest} is not empty", "download into a new or empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    uri = client.get_model_version_download_uri(model_name, version)
    with _scratch_dir(dest.parent) as scratch:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(scratch), tracking_uri=client.tracking_uri))
        problems = compare_checksums(local, expected)
        if problems:
            raise ChecksumMismatch(f"version {version} of {model_name!r} failed verification",
                                   problems, "the artifact store copy is corrupt or was "
                                   "changed; register the adapter again from its folder")
        if dest.exists():
            dest.rmdir()
        local.rename(dest)
    return dest


@contextmanager
def _scratch_dir(parent: Path | None = None) -> Iterator[Path]:
    """A temporary folder, deleted on exit whatever happens inside."""
    path = Path(tempfile.mkdtemp(prefix=".evolora-registry-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def verify_version(client: MlflowClient, model_name: str, version: ModelVersion,
                   verify_dir: Path | None = None) -> None:
    """Raise ChecksumMismatch unless the store's files (and `verify_dir`'s) match the tags."""
    with _scratch_dir() as scratch:
        download_version(client, model_name, version.version, scratch / "adapter")
    if verify_dir is not None:
        problems = compare_checksums(Path(verify_dir), version_checksums(version))
        if problems:
            raise ChecksumMismatch(f"{verify_dir} differs from version {version.version}",
                                   problems, "use the folder the version was registered from")
