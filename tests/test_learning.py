"""The learner end to end on the tiny model: the Prefect flow, the files and MLflow records.

These check the pipeline's artifacts and bookkeeping, not the accuracy: a 2-layer random
model answers nothing right. The accuracy claim (SmolLM2-135M base vs a trained adapter)
is measured by `evolora train -c demo` and recorded in the README.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli.main import app
from evolora.settings import Settings
from evolora.tracking import setup_mlflow
from evolora.vocabulary import CANDIDATE_TAG, ENGINE_TAG
from tasks.train.trainer import ADAPTER_MANIFEST, read_adapter_manifest, verify_adapter_files


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.server
def test_train_adapter_flow_writes_adapter_and_tracks_every_step(
    tiny_settings: Settings, prefect_harness: None
) -> None:
    from flows.train_adapter import train_adapter_flow

    summary = train_adapter_flow(config="tiny", adapter_name="a0")

    adapter_dir = summary.adapter.adapter_dir
    assert adapter_dir == tiny_settings.paths.data_dir / "adapters" / "a0"
    assert {"adapter_config.json", "adapter_model.safetensors", ADAPTER_MANIFEST} <= {
        p.name for p in adapter_dir.iterdir()}
    assert verify_adapter_files(adapter_dir) == []
    manifest = read_adapter_manifest(adapter_dir)
    assert manifest["train"]["rank"] == tiny_settings.train.rank
    assert set(manifest["dataset_hashes"]) == {"train", "eval", "test"}
    # Only the adapter: no base weights travel with it.
    assert not (adapter_dir / "model.safetensors").exists()
    # No staging folder is left beside it.
    assert [p.name for p in adapter_dir.parent.iterdir()] == ["a0"]

    setup_mlflow(tiny_settings)
    client = MlflowClient()
    parent = client.get_run(summary.mlflow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_step = {(r.data.tags["evolora.step"], r.data.tags.get(CANDIDATE_TAG)): r
               for r in children}
    assert set(by_step) == {("data", None), ("train", None), ("evaluate", "base"),
                            ("evaluate", "a0")}
    for candidate in ("base", "a0"):
        metrics = by_step[("evaluate", candidate)].data.metrics
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        for skill in tiny_settings.data.skills:
            assert f"test_accuracy_{skill}_easy" in metrics
            assert f"test_accuracy_{skill}_hard" in metrics
        expected = len(tiny_settings.data.skills) * tiny_settings.data.test_per_skill
        assert metrics["test_problems"] == expected
    train_run = by_step[("train", None)]
    losses = client.get_metric_history(train_run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, tiny_settings.train.max_steps + 1))
    assert train_run.data.metrics["peak_rss_mb"] > 0
    assert train_run.data.metrics["train_tokens_per_s"] > 0
    assert train_run.data.params["train.rank"] == str(tiny_settings.train.rank)
    trained_on = [i.dataset.name for i in train_run.inputs.dataset_inputs]
    assert trained_on == ["train-a0"]
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts
    data_run = by_step[("data", None)]
    contexts = {tag.value for i in data_run.inputs.dataset_inputs for tag in i.tags
                if tag.key == "mlflow.data.context"}
    assert contexts == {"training", "validation", "testing"}
    assert summary.test["base"]["test_accuracy"] == \
        by_step[("evaluate", "base")].data.metrics["test_accuracy"]


def test_failed_training_leaves_no_adapter_and_marks_the_run_failed(
    tiny_settings: Settings
) -> None:
    from tasks.data import build_splits
    from tasks.train.trainer import train_adapter

    bundle = build_splits(tiny_settings.data, tiny_settings.paths.data_dir)
    broken = tiny_settings.model_copy(update={"train": tiny_settings.train.model_copy(
        update={"target_modules": ["no_such_proj"]})})
    setup_mlflow(broken)
    adapters = tiny_settings.paths.data_dir / "adapters"
    with pytest.raises(ValueError, match="no_such_proj"):
        train_adapter(broken, tiny_settings.model.base, bundle.train, adapters, "broken")
    assert not adapters.exists() or list(adapters.iterdir()) == []


def test_adapter_whose_files_changed_fails_verification(tmp_path: Path) -> None:
    from tasks.train.trainer import write_adapter_manifest

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    write_adapter_manifest(tmp_path, {"name": "x"})
    assert verify_adapter_files(tmp_path) == []
    (tmp_path / "adapter_model.safetensors").write_bytes(b"tampered")
    assert verify_adapter_files(tmp_path) == ["adapter_model.safetensors"]


def test_eval_cli_reports_json_and_refuses_a_missing_adapter(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["eval", "--config", "tiny", "--adapter",
                                  str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "no adapter at" in missing.output

    result = runner.invoke(app, ["eval", "--config", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["candidate"] == "base" and report["split"] == "test"
    assert 0.0 <= report["metrics"]["test_accuracy"] <= 1.0
    mlflow.set_tracking_uri(tiny_settings.paths.resolved_tracking_uri)
    run = MlflowClient().get_run(report["run_id"])
    assert run.data.tags[CANDIDATE_TAG] == "base"
    assert run.data.tags[ENGINE_TAG] == "llamacpp"  # the default engine scored it
    assert run.data.metrics["test_accuracy"] == report["metrics"]["test_accuracy"]

    reference = runner.invoke(app, ["eval", "--config", "tiny", "--json", "--engine",
                                    "transformers"])
    assert reference.exit_code == 0, reference.output
    other = json.loads(reference.stdout)
    assert MlflowClient().get_run(other["run_id"]).data.tags[ENGINE_TAG] == "transformers"
    # The same model in both engines: the same scores, metric by metric.
    same_keys = [k for k in report["metrics"] if not k.endswith("wall_s")]
    assert {k: other["metrics"][k] for k in same_keys} == {
        k: report["metrics"][k] for k in same_keys}
    wrong = runner.invoke(app, ["eval", "--config", "tiny", "--engine", "vllm"])
    assert wrong.exit_code == 2 and "unknown engine 'vllm'" in wrong.output


def test_eval_of_a_broken_adapter_folder_is_a_clear_error(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    result = CliRunner().invoke(app, ["eval", "--config", "tiny", "--adapter", str(broken)])
    assert result.exit_code == 2
    assert "does not load" in result.output
    shutil.rmtree(broken)


def test_qlora_nf4_quantises_the_base_and_trains_an_adapter(tiny_settings: Settings) -> None:
    import bitsandbytes as bnb

    from tasks.data import build_splits
    from tasks.train.memory_plan import ModelShape, plan_training
    from tasks.train.trainer import load_for_training, train_adapter

    settings = tiny_settings.model_copy(update={"train": tiny_settings.train.model_copy(
        update={"quantization": "nf4"})})
    plan = plan_training(settings.train, ModelShape(3_000_000, 64, 2, 49152, 128), "cpu")
    assert plan.quantization == "nf4"
    model = load_for_training(settings.model.base, plan, settings.train)
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised, "the frozen base layers should be 4-bit"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantised)
    # Double quantisation: the absmax statistics are themselves quantised.
    assert all(m.weight.quant_state.nested for m in quantised)

    setup_mlflow(settings)
    bundle = build_splits(settings.data, settings.paths.data_dir)
    result = train_adapter(settings, settings.model.base, bundle.train,
                           settings.paths.data_dir / "adapters", "qlora")
    assert result.plan.quantization == "nf4"
    assert verify_adapter_files(result.adapter_dir) == []
    assert read_adapter_manifest(result.adapter_dir)["plan"]["quantization"] == "nf4"


@pytest.mark.gpu
def test_qlora_on_cuda_stays_inside_the_vram_budget(tiny_settings: Settings) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from tasks.data import build_splits
    from tasks.train.trainer import train_adapter

    setup_mlflow(tiny_settings)
    bundle = build_splits(tiny_settings.data, tiny_settings.paths.data_dir)
    settings = tiny_settings.model_copy(update={"train": tiny_settings.train.model_copy(
        update={"quantization": "auto", "vram_budget_gb": 4.0})})
    result = train_adapter(settings, settings.model.base, bundle.train,
                           settings.paths.data_dir / "adapters", "cuda")
    assert result.plan.quantization == "nf4" and result.plan.device == "cuda"
    assert result.metrics["peak_vram_mb"] < 4.0 * 1024
    # What the card holds is reserved memory (plus the CUDA context): within the plan's share.
    reserved_gib = result.metrics["peak_vram_reserved_mb"] / 1024
    assert reserved_gib <= result.plan.estimated_peak_gib <= result.plan.usable_gib


def test_data_generate_cli_reports_splits_and_refuses_an_unknown_skill(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "generate", "--config", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["rows"]["test"] == len(tiny_settings.data.skills) * \
        tiny_settings.data.test_per_skill
    assert Path(facts["test_path"]).is_dir()
    again = json.loads(runner.invoke(app, ["data", "generate", "-c", "tiny", "--json"]).stdout)
    assert again["hashes"]["test"] == facts["hashes"]["test"], "the test set is frozen"

    monkeypatch.setenv("EVOLORA_DATA__SKILLS", '["arithmetic", "telepathy"]')
    before = sorted(p.name for p in (tiny_settings.paths.data_dir / "datasets").iterdir())
    refused = runner.invoke(app, ["data", "generate", "--config", "tiny"])
    assert refused.exit_code == 2
    assert "telepathy" in refused.output and "arithmetic" in refused.output
    after = sorted(p.name for p in (tiny_settings.paths.data_dir / "datasets").iterdir())
    assert after == before, "a refused run writes nothing"
