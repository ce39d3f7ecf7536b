"""The MLflow model registry: register adapters with genealogy and checksums, gate, promote.

Every registered version points at its run's `adapter/` artifact and carries tags:
`evolora.<key>` for its genealogy, `evolora.sha256.<file>` for each file and
`evolora.metric.<name>` for its frozen test-set scores. The alias `champion` is what the
service loads; `previous` is the champion before it, kept for `rollback`.

Checksum failures always raise `ChecksumMismatch` (after tagging the version as refused): a
corrupted or tampered adapter is an incident that must stop a flow, not an ordinary "worse
challenger" verdict that a flow logs and moves on from.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evolora.models import sha256_file

DEFAULT_MODEL_NAME = "evolora-adapter"
CHAMPION = "champion"
PREVIOUS = "previous"
ARTIFACT_PATH = "adapter"
OVERALL = "test_accuracy"

TAG_PREFIX = "evolora."
SHA_PREFIX = "evolora.sha256."
METRIC_PREFIX = "evolora.metric."
CANDIDATE_NAME_TAG = "evolora.candidate"
JSON_KEYS_TAG = "evolora.json_keys"
GATE_TAG = "evolora.gate"
GATE_REASONS_TAG = "evolora.gate.reasons"
GATE_CHAMPION_TAG = "evolora.gate.champion"
GATE_AT_TAG = "evolora.gate.at"
ROLLBACK_TAG = "evolora.rolled_back_to_at"
# Tag names the registry writes itself: a genealogy key must not shadow them.
_RESERVED = ("sha256.", "metric.", "candidate", "json_keys", "gate", "rolled_back")
# Float noise must not decide a promotion: 0.3 - 0.2 is 0.0999..., which is a 0.1 margin.
_EPS = 1e-9


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


@dataclass
class GateDecision:
    """Whether a challenger is promoted, and why (one reason per failing check)."""

    promote: bool
    reasons: list[str]
    challenger: str
    champion: str | None
    margin: float
    deltas: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
                       model_name: str = DEFAULT_MODEL_NAME,
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


def _version_tags(candidate: Candidate, checksums: dict[str, str]) -> dict[str, str]:
    clashes = [k for k in candidate.genealogy if str(k).startswith(_RESERVED)]
    if clashes:
        raise RegistryError(f"genealogy keys {clashes} clash with the registry's own tags",
                            f"rename them (reserved prefixes: {', '.join(_RESERVED)})")
    tags = {CANDIDATE_NAME_TAG: candidate.name}
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


# --- the gate ---------------------------------------------------------------------------------


def gate(challenger_metrics: dict[str, float], champion_metrics: dict[str, float] | None, *,
         margin: float, tolerance: float, challenger: str = "challenger",
         champion: str | None = None) -> GateDecision:
    """Promote iff overall test accuracy beats the champion's by `margin` (ties count when
    the margin is 0) and no per-skill / per-level test accuracy drops by more than
    `tolerance`. No champion yet: promote. Pure: no I/O."""
    if champion_metrics is None:
        champion = None
    if OVERALL not in challenger_metrics:
        return GateDecision(False, [f"{challenger} has no {OVERALL}: evaluate it on the frozen "
                                    "test set before promoting"], challenger, champion, margin)
    # NaN compares false with everything, so it would slip through every check below.
    broken = sorted(k for k, v in challenger_metrics.items()
                    if k.startswith(OVERALL) and not math.isfinite(v))
    if broken:
        return GateDecision(False, [f"{challenger} has non-finite {', '.join(broken)}: its "
                                    "evaluation failed; evaluate it again"],
                            challenger, champion, margin)
    if champion_metrics is None:
        return GateDecision(True, [f"no champion yet: {challenger} becomes the first "
                                   f"({OVERALL} {challenger_metrics[OVERALL]:.3f})"],
                            challenger, None, margin)
    if OVERALL not in champion_metrics:
        return GateDecision(False, [f"champion {champion} has no {OVERALL} to compare with; "
                                    "promote with --force if this is intended"],
                            challenger, champion, margin)

    reasons: list[str] = []
    deltas = {OVERALL: challenger_metrics[OVERALL] - champion_metrics[OVERALL]}
    if deltas[OVERALL] < margin - _EPS:
        reasons.append(f"{OVERALL} {challenger_metrics[OVERALL]:.3f} vs champion "
                       f"{champion_metrics[OVERALL]:.3f} ({deltas[OVERALL]:+.3f}) is below the "
                       f"margin of +{margin:.3f}")
    # Every finer test metric the champion has (per skill, per level, per skill x level):
    # an overall gain must not hide a skill that got much worse.
    for key in sorted(k for k in champion_metrics if k.startswith(f"{OVERALL}_")):
        label = key.removeprefix(f"{OVERALL}_")
        if key not in challenger_metrics:
            reasons.append(f"{label}: {challenger} was not scored on it "
                           f"(champion {champion_metrics[key]:.3f}); evaluate on the same test set")
            continue
        deltas[key] = challenger_metrics[key] - champion_metrics[key]
        if deltas[key] < -tolerance - _EPS:
            reasons.append(f"{label}: {key} fell {champion_metrics[key]:.3f} -> "
                           f"{challenger_metrics[key]:.3f} ({deltas[key]:+.3f}), more than the "
                           f"tolerance of {tolerance:.3f}")
    if reasons:
        return GateDecision(False, reasons, challenger, champion, margin, deltas)
    return GateDecision(True, [f"{OVERALL} {challenger_metrics[OVERALL]:.3f} vs champion "
                               f"{champion_metrics[OVERALL]:.3f} ({deltas[OVERALL]:+.3f}, margin "
                               f"+{margin:.3f}); no skill fell more than {tolerance:.3f}"],
                        challenger, champion, margin, deltas)


# --- aliases: promote and roll back -----------------------------------------------------------


def _set_previous(client: MlflowClient, model_name: str, version: str) -> None:
    client.set_registered_model_alias(model_name, PREVIOUS, version)


def _set_champion(client: MlflowClient, model_name: str, version: str) -> None:
    client.set_registered_model_alias(model_name, CHAMPION, version)


def _move_champion(client: MlflowClient, model_name: str, version: str,
                   current: ModelVersion | None) -> None:
    """`previous` <- the current champion FIRST, then `champion` <- version.

    A crash between the two leaves `champion` on the old, complete version (and `previous`
    on the same one): the service keeps serving a loadable adapter, and promoting again
    finishes the move. The other order could leave no way back to the old champion.
    """
    if current is not None:
        _set_previous(client, model_name, current.version)
    _set_champion(client, model_name, version)


def _record_decision(client: MlflowClient, model_name: str, version: str,
                     decision: GateDecision) -> None:
    for key, value in {
        GATE_TAG: "promoted" if decision.promote else "refused",
        GATE_REASONS_TAG: json.dumps(decision.reasons),
        GATE_CHAMPION_TAG: decision.champion or "",
        GATE_AT_TAG: datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }.items():
        client.set_model_version_tag(model_name, version, key, value)


def _label(version: ModelVersion | None) -> str | None:
    return f"v{version.version}" if version is not None else None


def _verify_or_refuse(client: MlflowClient, model_name: str, version: ModelVersion,
                      verify_dir: Path | None, champion: ModelVersion | None) -> None:
    try:
        verify_version(client, model_name, version, verify_dir)
    except ChecksumMismatch as exc:
        _record_decision(client, model_name, version.version, GateDecision(
            False, [f"checksum: {exc}"], _label(version) or "", _label(champion), 0.0))
        raise


def _judge(client: MlflowClient, model_name: str, version: str, *, margin: float,
           tolerance: float, verify_dir: Path | None
           ) -> tuple[ModelVersion, ModelVersion | None, GateDecision, bool]:
    """Verify `version`, then judge it against the champion.

    Returns (challenger, champion, decision, settled): `settled` when there is nothing to
    move (it already is the champion); else `decision` is the gate's verdict. A checksum
    failure tags the version refused and raises ChecksumMismatch.
    """
    challenger = get_version(client, model_name, str(version))
    champion = get_alias(client, model_name, CHAMPION)
    _verify_or_refuse(client, model_name, challenger, verify_dir, champion)
    if champion is not None and str(champion.version) == str(challenger.version):
        return challenger, champion, GateDecision(
            False, [f"v{challenger.version} is already the champion"],
            _label(challenger) or "", _label(champion), margin), True
    decision = gate(version_metrics(challenger),
                    version_metrics(champion) if champion is not None else None,
                    margin=margin, tolerance=tolerance, challenger=_label(challenger) or "",
                    champion=_label(champion))
    return challenger, champion, decision, False


def promote_if_better(client: MlflowClient, model_name: str, version: str, *, margin: float,
                      tolerance: float, verify_dir: Path | None = None) -> GateDecision:
    """The gate's decision on `version` vs the champion, applied to the aliases if it passes.

    The version's files are verified first: the artifact store's copy (downloaded to a
    temporary folder) and, when given, `verify_dir` (e.g. the folder just registered). A
    failure tags the version refused and raises ChecksumMismatch: it is never promoted.
    """
    challenger, champion, decision, settled = _judge(
        client, model_name, version, margin=margin, tolerance=tolerance, verify_dir=verify_dir)
    if settled:
        return decision
    if decision.promote:
        _move_champion(client, model_name, challenger.version, champion)
    # Tagged after the aliases move: a crash in between leaves an untagged champion, never
    # a version tagged "promoted" that is not.
    _record_decision(client, model_name, challenger.version, decision)
    return decision


def promote(client: MlflowClient, model_name: str, version: str, *, force: bool = False,
            margin: float = 0.0, tolerance: float = 0.1,
            verify_dir: Path | None = None) -> GateDecision:
    """Manual promotion: the gate as in `promote_if_better`, or skipped with `force`.

    `force` skips the quality gate only; a checksum failure still raises ChecksumMismatch.
    """
    if not force:
        return promote_if_better(client, model_name, version, margin=margin,
                                 tolerance=tolerance, verify_dir=verify_dir)
    challenger, champion, advice, settled = _judge(
        client, model_name, version, margin=margin, tolerance=tolerance, verify_dir=verify_dir)
    if settled:
        return advice
    _move_champion(client, model_name, challenger.version, champion)
    verdict = "would have passed" if advice.promote else "would have refused"
    decision = GateDecision(True, ["forced by the operator; the gate " + verdict + ": "
                                   + "; ".join(advice.reasons)],
                            advice.challenger, advice.champion, margin, advice.deltas)
    _record_decision(client, model_name, challenger.version, decision)
    return decision


def rollback(client: MlflowClient, model_name: str = DEFAULT_MODEL_NAME) -> ModelVersion:
    """The new champion: the `previous` version; `previous` then points at the old champion,
    so a second rollback undoes the first."""
    previous = get_alias(client, model_name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"model {model_name!r} has no {PREVIOUS!r} version to roll back to",
                            "a rollback needs two promotions; promote a version with "
                            "`evolora registry promote VERSION`")
    champion = get_alias(client, model_name, CHAMPION)
    if champion is not None and str(champion.version) == str(previous.version):
        raise RegistryError(f"{CHAMPION!r} and {PREVIOUS!r} both point at v{previous.version} "
                            "(an interrupted promotion)",
                            "promote the intended version again to finish the move")
    # Rolling back promotes a version too: its files must still match their checksums.
    verify_version(client, model_name, previous)
    # The champion moves first: the rollback's whole point is to stop serving the current one.
    _set_champion(client, model_name, previous.version)
    if champion is not None:
        _set_previous(client, model_name, champion.version)
    else:
        client.delete_registered_model_alias(model_name, PREVIOUS)
    client.set_model_version_tag(model_name, previous.version, ROLLBACK_TAG,
                                 datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return client.get_model_version(model_name, previous.version)


# --- listing ----------------------------------------------------------------------------------


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
        "candidate": version.tags.get(CANDIDATE_NAME_TAG),
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000,
                                          timezone.utc).isoformat(timespec="seconds"),
        "run_id": version.run_id,
        "source": version.source,
        "metrics": version_metrics(version),
        "genealogy": version_genealogy(version),
        "checksums": version_checksums(version),
        "gate": version_gate(version),
    }


def list_versions(client: MlflowClient, model_name: str = DEFAULT_MODEL_NAME
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
