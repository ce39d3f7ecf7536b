"""The model registry on a real MLflow store in tmp: register, verify, gate, promote, roll back.

Adapter folders are tiny but real (config, safetensors, manifest), logged as the `adapter/`
artifact of real MLflow runs. A fresh SQLite store spends ~5 s creating its tables, so one
empty store is made per session and copied into each test's tmp folder.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import pytest
import typer
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli.registry import registry_app
from evolora.settings import Settings
from evolora.tracking import setup_mlflow
from evolora.vocabulary import CHAMPION, PREVIOUS, REGISTERED_MODEL_NAME
from tasks.registry import (
    Candidate,
    ChecksumMismatch,
    RegistryError,
    download_version,
    gate,
    get_alias,
    list_versions,
    promote,
    promote_if_better,
    register_candidate,
    rollback,
    version_metrics,
)
from tasks.registry import promotion as registry_promotion
from tasks.registry.versions import (
    files_sha256,
    version_checksums,
    version_gate,
    version_genealogy,
)

NAME = REGISTERED_MODEL_NAME


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def empty_store_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables created and nothing in it."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tiny_settings: Settings, empty_store_db: Path,
          monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, MlflowClient]:
    """tiny_settings with a ready MLflow store under tmp, and a client on it."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlruns = tiny_settings.paths.mlruns_dir
    mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store_db, mlruns / "mlflow.db")
    return tiny_settings, setup_mlflow(tiny_settings)


@pytest.fixture
def client(store: tuple[Settings, MlflowClient]) -> MlflowClient:
    return store[1]


def make_adapter(folder: Path, seed: int) -> Path:
    """A small but valid adapter folder: config, safetensors weights, manifest."""
    import torch
    from safetensors.torch import save_file

    from tasks.train.trainer import write_adapter_manifest

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}))
    generator = torch.Generator().manual_seed(seed)
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight":
               torch.randn(4, 16, generator=generator)}, str(folder / "adapter_model.safetensors"))
    write_adapter_manifest(folder, {"name": folder.name, "seed": seed})
    return folder


def scores(overall: float, **finer: float) -> dict[str, float]:
    """Test metrics: `test_accuracy` plus `test_accuracy_<key>` for each keyword."""
    return {"test_accuracy": overall, **{f"test_accuracy_{k}": v for k, v in finer.items()}}


def register(client: MlflowClient, tmp_path: Path, name: str, metrics: dict[str, float],
             log_artifact: bool = True, genealogy: dict[str, Any] | None = None
             ) -> ModelVersion:
    """Train-like run (with or without its adapter/ artifact), then register it."""
    adapter_dir = make_adapter(tmp_path / "adapters" / name, seed=zlib.crc32(name.encode()) % 1000)
    with mlflow.start_run(run_name=f"train-{name}") as run:
        if log_artifact:
            mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    genealogy = genealogy if genealogy is not None else {"member": name, "generation": 0}
    return register_candidate(client, Candidate(name, adapter_dir, run.info.run_id, metrics,
                                                genealogy))


def store_path(version: ModelVersion) -> Path:
    """The version's artifact folder on disk (the local store's file:// source)."""
    return Path(unquote(urlparse(version.source).path))


def alias_version(client: MlflowClient, alias: str) -> str | None:
    version = get_alias(client, NAME, alias)
    return version.version if version else None


# --- register and download --------------------------------------------------------------------


def test_register_records_genealogy_metrics_and_checksums(client: MlflowClient,
                                                          tmp_path: Path) -> None:
    genealogy = {"member": "g1-c0", "parents": ["m0", "m1"], "generation": 1,
                 "recipe": {"combination_type": "ties", "weights": [0.6, 0.4]},
                 "data_hashes": {"train": "ab12"}, "base_model_sha256": "f00d", "note": "3"}
    metrics = scores(0.75, dates=0.5, dates_hard=0.25)
    # No adapter artifact on the run: registering logs it.
    version = register(client, tmp_path, "g1-c0", metrics, log_artifact=False,
                       genealogy=genealogy)

    assert version.status == "READY"
    assert version.source.endswith("/adapter")
    assert version_genealogy(version) == genealogy  # "3" stays a string, lists stay lists
    assert version_metrics(version) == metrics
    adapter_dir = tmp_path / "adapters" / "g1-c0"
    assert version_checksums(version) == files_sha256(adapter_dir)
    assert set(version_checksums(version)) == {"adapter_config.json",
                                               "adapter_model.safetensors",
                                               "evolora-adapter.json"}
    logged = client.list_artifacts(version.run_id, "adapter")
    assert {Path(f.path).name for f in logged} == set(files_sha256(adapter_dir))

    # Registering the same files from the same run again (a resumed flow) is a no-op.
    again = register_candidate(client, Candidate("g1-c0", adapter_dir, version.run_id,
                                                 metrics, genealogy))
    assert again.version == version.version
    assert len(list_versions(client, NAME)) == 1


def test_register_refuses_adapter_that_differs_from_its_manifest(client: MlflowClient,
                                                                 tmp_path: Path) -> None:
    adapter_dir = make_adapter(tmp_path / "broken", seed=1)
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"not the trained weights")
    with mlflow.start_run() as run:
        pass
    with pytest.raises(ChecksumMismatch, match=r"adapter_model\.safetensors"):
        register_candidate(client, Candidate("broken", adapter_dir, run.info.run_id,
                                             scores(0.9), {}))
    assert list_versions(client, NAME) == []


def test_register_refuses_a_run_whose_adapter_artifact_is_another_adapter(
        client: MlflowClient, tmp_path: Path) -> None:
    version = register(client, tmp_path, "first", scores(0.5))
    other = make_adapter(tmp_path / "other", seed=99)
    with pytest.raises(ChecksumMismatch, match="already has an `adapter/` artifact"):
        register_candidate(client, Candidate("other", other, version.run_id, scores(0.6), {}))


def test_download_verifies_and_a_tampered_artifact_is_never_promoted(
        client: MlflowClient, tmp_path: Path) -> None:
    champion = register(client, tmp_path, "champ", scores(0.5))
    assert promote_if_better(client, NAME, champion.version, margin=0.0, tolerance=0.1).promote
    challenger = register(client, tmp_path, "better", scores(0.9))

    good = download_version(client, NAME, challenger.version, tmp_path / "dl" / "ok")
    assert files_sha256(good) == version_checksums(challenger)

    # Someone changes the weights in the artifact store after registration.
    weights = store_path(challenger) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    dest = tmp_path / "dl" / "bad"
    with pytest.raises(ChecksumMismatch, match=r"adapter_model\.safetensors"):
        download_version(client, NAME, challenger.version, dest)
    assert not dest.exists()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ok"]  # no leftovers

    with pytest.raises(ChecksumMismatch):
        promote_if_better(client, NAME, challenger.version, margin=0.0, tolerance=0.1)
    with pytest.raises(ChecksumMismatch):
        promote(client, NAME, challenger.version, force=True)
    assert alias_version(client, CHAMPION) == champion.version
    assert alias_version(client, PREVIOUS) is None
    recorded = version_gate(client.get_model_version(NAME, challenger.version))
    assert recorded["decision"] == "refused"
    assert "checksum" in recorded["reasons"][0]


def test_an_injected_extra_file_fails_verification(client: MlflowClient, tmp_path: Path) -> None:
    version = register(client, tmp_path, "v", scores(0.5))
    (store_path(version) / "payload.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ChecksumMismatch, match=r"payload\.pkl: not in the recorded checksums"):
        download_version(client, NAME, version.version, tmp_path / "dl")


# --- the gate (pure) --------------------------------------------------------------------------


def test_gate_promotes_the_first_challenger_when_there_is_no_champion() -> None:
    decision = gate(scores(0.1), None, margin=0.5, tolerance=0.0, challenger="v1")
    assert decision.promote and decision.champion is None
    assert "no champion yet" in decision.reasons[0]


def test_gate_requires_the_margin() -> None:
    refused = gate(scores(0.75), scores(0.70), margin=0.1, tolerance=0.1, challenger="v2",
                   champion="v1")
    assert not refused.promote
    assert refused.deltas["test_accuracy"] == pytest.approx(0.05)
    assert "0.750" in refused.reasons[0] and "0.700" in refused.reasons[0]
    assert "+0.100" in refused.reasons[0]
    # 0.3 - 0.2 is 0.0999... in floats: exactly the margin still passes.
    assert gate(scores(0.3), scores(0.2), margin=0.1, tolerance=0.1).promote
    assert gate(scores(0.81), scores(0.70), margin=0.1, tolerance=0.1).promote


@pytest.mark.parametrize(("margin", "promoted"), [(0.0, True), (0.05, False)])
def test_gate_ties_pass_only_with_zero_margin(margin: float, promoted: bool) -> None:
    assert gate(scores(0.6, dates=0.5), scores(0.6, dates=0.5), margin=margin,
                tolerance=0.0).promote is promoted


def test_gate_refuses_an_overall_gain_that_hides_a_skill_regression() -> None:
    champion = scores(0.60, dates=0.90, units=0.50, dates_hard=0.80, hard=0.5)
    challenger = scores(0.70, dates=0.60, units=0.80, dates_hard=0.40, hard=0.5)
    decision = gate(challenger, champion, margin=0.0, tolerance=0.1)
    assert not decision.promote
    assert len(decision.reasons) == 2  # every failing skill named, not only the first
    dates = next(r for r in decision.reasons if r.startswith("dates:"))
    assert "0.900 -> 0.600" in dates and "-0.300" in dates and "0.100" in dates
    assert any(r.startswith("dates_hard:") and "0.800 -> 0.400" in r for r in decision.reasons)
    assert decision.deltas["test_accuracy_units"] == pytest.approx(0.3)


def test_gate_allows_a_drop_within_the_tolerance() -> None:
    # 0.9 - 0.8 is 0.0999... in floats: a drop of exactly the tolerance passes.
    assert gate(scores(0.7, dates=0.8), scores(0.6, dates=0.9), margin=0.0,
                tolerance=0.1).promote
    assert not gate(scores(0.7, dates=0.79), scores(0.6, dates=0.9), margin=0.0,
                    tolerance=0.1).promote


def test_gate_refuses_unscored_challengers_and_skills() -> None:
    assert not gate({"test_loss": 1.0}, None, margin=0.0, tolerance=0.1).promote
    missing = gate(scores(0.9), scores(0.5, dates=0.5), margin=0.0, tolerance=0.1)
    assert not missing.promote and "dates: challenger was not scored" in missing.reasons[0]
    # A skill only the challenger has (a newer test set) is no regression.
    assert gate(scores(0.9, units=0.1), scores(0.5), margin=0.0, tolerance=0.1).promote
    nan = gate(scores(0.9, dates=float("nan")), None, margin=0.0, tolerance=0.1)
    assert not nan.promote and "test_accuracy_dates" in nan.reasons[0]
    no_baseline = gate(scores(0.9), {"test_loss": 1.0}, margin=0.0, tolerance=0.1)
    assert not no_baseline.promote and "--force" in no_baseline.reasons[0]


# --- promotion, refusal, rollback, atomicity --------------------------------------------------


def test_promote_if_better_moves_champion_and_keeps_previous(client: MlflowClient,
                                                             tmp_path: Path) -> None:
    v1 = register(client, tmp_path, "m0", scores(0.5, dates=0.5))
    v2 = register(client, tmp_path, "m1", scores(0.7, dates=0.5))
    first = promote_if_better(client, NAME, v1.version, margin=0.05, tolerance=0.1)
    assert first.promote and alias_version(client, CHAMPION) == v1.version

    decision = promote_if_better(client, NAME, v2.version, margin=0.05, tolerance=0.1,
                                 verify_dir=tmp_path / "adapters" / "m1")
    assert decision.promote and decision.champion == f"v{v1.version}"
    assert alias_version(client, CHAMPION) == v2.version
    assert alias_version(client, PREVIOUS) == v1.version
    recorded = version_gate(client.get_model_version(NAME, v2.version))
    assert recorded["decision"] == "promoted" and recorded["champion"] == f"v{v1.version}"
    # The champion itself is not promoted over itself (previous would lose the old one).
    again = promote_if_better(client, NAME, v2.version, margin=0.0, tolerance=0.1)
    assert not again.promote and "already the champion" in again.reasons[0]
    assert alias_version(client, PREVIOUS) == v1.version


def test_the_gate_refuses_a_worse_challenger(client: MlflowClient, tmp_path: Path) -> None:
    v1 = register(client, tmp_path, "good", scores(0.8, dates=0.9))
    promote_if_better(client, NAME, v1.version, margin=0.0, tolerance=0.1)
    v2 = register(client, tmp_path, "worse", scores(0.9, dates=0.5))
    decision = promote_if_better(client, NAME, v2.version, margin=0.0, tolerance=0.1)
    assert not decision.promote
    assert alias_version(client, CHAMPION) == v1.version
    assert alias_version(client, PREVIOUS) is None
    recorded = version_gate(client.get_model_version(NAME, v2.version))
    assert recorded["decision"] == "refused"
    assert any("dates" in r and "0.900 -> 0.500" in r for r in recorded["reasons"])

    forced = promote(client, NAME, v2.version, force=True, margin=0.0, tolerance=0.1)
    assert forced.promote and "would have refused" in forced.reasons[0]
    assert alias_version(client, CHAMPION) == v2.version


def test_rollback_restores_the_previous_champion_and_a_second_undoes_it(
        client: MlflowClient, tmp_path: Path) -> None:
    v1 = register(client, tmp_path, "a", scores(0.5))
    v2 = register(client, tmp_path, "b", scores(0.6))
    promote_if_better(client, NAME, v1.version, margin=0.0, tolerance=0.1)
    promote_if_better(client, NAME, v2.version, margin=0.0, tolerance=0.1)

    assert rollback(client, NAME).version == v1.version
    assert (alias_version(client, CHAMPION), alias_version(client, PREVIOUS)) == (
        v1.version, v2.version)
    assert rollback(client, NAME).version == v2.version
    assert (alias_version(client, CHAMPION), alias_version(client, PREVIOUS)) == (
        v2.version, v1.version)


def test_rollback_without_previous_says_why(client: MlflowClient, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no 'previous' version to roll back to"):
        rollback(client, NAME)  # the model does not even exist yet
    v1 = register(client, tmp_path, "only", scores(0.5))
    promote_if_better(client, NAME, v1.version, margin=0.0, tolerance=0.1)
    with pytest.raises(RegistryError, match="no 'previous'") as caught:
        rollback(client, NAME)
    assert "promote" in caught.value.fix


def test_a_crash_between_the_alias_moves_leaves_a_loadable_champion(
        client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = register(client, tmp_path, "old", scores(0.5))
    promote_if_better(client, NAME, v1.version, margin=0.0, tolerance=0.1)
    v2 = register(client, tmp_path, "new", scores(0.9))

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt("killed between the two alias moves")

    monkeypatch.setattr(registry_promotion, "_set_champion", crash)
    with pytest.raises(KeyboardInterrupt):
        promote_if_better(client, NAME, v2.version, margin=0.0, tolerance=0.1)
    monkeypatch.undo()

    # Only `previous` moved: `champion` is still the old, complete version.
    assert alias_version(client, PREVIOUS) == v1.version
    champion = get_alias(client, NAME, CHAMPION)
    assert champion is not None and champion.version == v1.version
    loaded = download_version(client, NAME, champion.version, tmp_path / "serve")
    assert files_sha256(loaded) == version_checksums(champion)
    assert "evolora.gate" not in client.get_model_version(NAME, v2.version).tags
    with pytest.raises(RegistryError, match="interrupted promotion"):
        rollback(client, NAME)

    # Running the promotion again finishes the move.
    assert promote_if_better(client, NAME, v2.version, margin=0.0, tolerance=0.1).promote
    assert (alias_version(client, CHAMPION), alias_version(client, PREVIOUS)) == (
        v2.version, v1.version)


# --- the CLI ----------------------------------------------------------------------------------


runner = CliRunner()


@pytest.fixture
def cli() -> typer.Typer:
    """A small app mounting the registry commands as cli/main.py does."""
    app = typer.Typer()
    app.add_typer(registry_app, name="registry")
    return app


def invoke(app: typer.Typer, *args: str | int) -> Any:
    return runner.invoke(app, ["registry", *map(str, args), "--config", "tiny"])


def test_cli_list_show_promote(cli: typer.Typer, client: MlflowClient, tmp_path: Path) -> None:
    empty = invoke(cli, "list", "--json")
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout)["versions"] == []

    v1 = register(client, tmp_path, "m0", scores(0.5, dates=0.9),
                  genealogy={"member": "m0", "generation": 0, "parents": []})
    v2 = register(client, tmp_path, "m1", scores(0.6, dates=0.2))
    assert invoke(cli, "promote", v1.version).exit_code == 0

    refused = invoke(cli, "promote", v2.version, "--json")
    assert refused.exit_code == 1, refused.output
    assert json.loads(refused.stdout)["promote"] is False
    forced = invoke(cli, "promote", v2.version, "--force", "--json")
    assert forced.exit_code == 0, forced.output

    listed = invoke(cli, "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["versions"]
    assert [row["version"] for row in rows] == [str(v2.version), str(v1.version)]
    assert rows[0]["aliases"] == [CHAMPION] and rows[1]["aliases"] == [PREVIOUS]
    assert rows[1]["test_accuracy"] == 0.5 and rows[1]["genealogy"]["member"] == "m0"

    shown = invoke(cli, "show", "previous", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["version"] == str(v1.version) and data["aliases"] == [PREVIOUS]
    assert data["metrics"]["test_accuracy_dates"] == 0.9
    assert data["genealogy"] == {"member": "m0", "generation": 0, "parents": []}
    assert set(data["checksums"]) >= {"adapter_model.safetensors", "adapter_config.json"}

    table = invoke(cli, "show", v2.version)
    assert table.exit_code == 0 and "forced by the operator" in table.stdout
    assert invoke(cli, "list").exit_code == 0

    rolled = invoke(cli, "rollback", "--json")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["champion"] == str(v1.version)


def test_cli_errors_exit_2_with_cause_and_fix(cli: typer.Typer,
                                              store: tuple[Settings, MlflowClient]) -> None:
    result = invoke(cli, "rollback")
    assert result.exit_code == 2
    assert "no 'previous' version to roll back to" in result.stderr
    assert "fix:" in result.stderr and "Traceback" not in result.output

    missing = invoke(cli, "show", "42")
    assert missing.exit_code == 2 and "no version 42" in missing.stderr
    no_alias = invoke(cli, "show", "champion", "--json")
    assert no_alias.exit_code == 2 and "no version with alias 'champion'" in no_alias.stderr
