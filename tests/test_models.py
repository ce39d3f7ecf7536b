"""Base models: the packaged GGUF becomes a loadable bf16 HF folder, once, with checksums."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from evolora.models import (
    MANIFEST_NAME,
    PACKAGED_MODELS,
    WEIGHTS_NAME,
    ModelError,
    PreparedModel,
    base_model_checksum,
    list_models,
    prepare_model,
    resolve_base_model,
    sha256_file,
)

NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


@pytest.fixture(scope="module")
def prepared(models_dir: Path) -> PreparedModel:
    """The real SmolLM2 conversion, done once for the module (~30 s on 2 cores)."""
    return prepare_model(NAME, models_dir)


# --- the real conversion ---------------------------------------------------------------


@pytest.mark.slow
def test_prepare_writes_an_hf_folder_with_a_manifest(
    prepared: PreparedModel, models_dir: Path
) -> None:
    folder = models_dir / NAME
    assert prepared.path == folder
    assert prepared.skipped is False
    for name in ("config.json", WEIGHTS_NAME, "tokenizer.json", "tokenizer_config.json",
                 MANIFEST_NAME):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["dtype"] == "bfloat16"

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["name"] == NAME
    assert manifest["dtype"] == "bfloat16"
    assert manifest["size_bytes"] == sum(f.stat().st_size for f in folder.iterdir()
                                         if f.name != MANIFEST_NAME)
    assert prepared.size_bytes == manifest["size_bytes"]


@pytest.mark.slow
def test_manifest_checksums_match_the_files(prepared: PreparedModel, models_dir: Path) -> None:
    manifest = json.loads((models_dir / NAME / MANIFEST_NAME).read_text())
    gguf = PACKAGED_MODELS[NAME].gguf_path()

    assert manifest["source"]["path"] == str(gguf)
    assert manifest["source"]["size"] == gguf.stat().st_size
    assert manifest["source"]["sha256"] == sha256_file(gguf) == prepared.source_sha256
    weights_sha = sha256_file(models_dir / NAME / WEIGHTS_NAME)
    assert manifest["weights_sha256"] == weights_sha == prepared.weights_sha256
    assert base_model_checksum(str(models_dir / NAME)) == weights_sha


@pytest.mark.slow
def test_weights_are_bf16_and_readable_by_others(prepared: PreparedModel) -> None:
    from safetensors import safe_open

    with safe_open(str(prepared.path / WEIGHTS_NAME), framework="pt") as weights:
        names = list(weights.keys())
        assert "model.embed_tokens.weight" in names
        assert len([n for n in names if n.startswith("model.layers.")]) > 0
        assert {str(weights.get_tensor(n).dtype) for n in names[:5]} == {"torch.bfloat16"}
    # Built in a private temp folder, but a server or another user must be able to read it.
    assert prepared.path.stat().st_mode & 0o005 == 0o005
    assert (prepared.path / WEIGHTS_NAME).stat().st_mode & 0o004


@pytest.mark.slow
def test_no_staging_folder_is_left_behind(prepared: PreparedModel, models_dir: Path) -> None:
    assert [p.name for p in models_dir.iterdir()] == [NAME]


@pytest.mark.slow
def test_second_prepare_is_skipped_and_changes_nothing(
    prepared: PreparedModel, models_dir: Path
) -> None:
    manifest_before = (models_dir / NAME / MANIFEST_NAME).read_bytes()
    weights_mtime = (models_dir / NAME / WEIGHTS_NAME).stat().st_mtime_ns

    started = time.perf_counter()
    again = prepare_model(NAME, models_dir)
    seconds = time.perf_counter() - started

    assert again.skipped is True
    assert (models_dir / NAME / MANIFEST_NAME).read_bytes() == manifest_before
    assert (models_dir / NAME / WEIGHTS_NAME).stat().st_mtime_ns == weights_mtime
    assert again.weights_sha256 == prepared.weights_sha256
    assert again.prepared_at == prepared.prepared_at
    assert seconds < 1.0


@pytest.mark.slow
def test_prepared_folder_loads_and_answers_a_chat_prompt(prepared: PreparedModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared.path)
    model = AutoModelForCausalLM.from_pretrained(prepared.path, dtype=torch.bfloat16)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    assert answer.strip()
    # Correctly dequantised weights know this; a mis-converted (random) model would not.
    assert "paris" in answer.lower(), answer


@pytest.mark.slow
def test_list_and_resolve_find_the_prepared_model(
    prepared: PreparedModel, models_dir: Path
) -> None:
    (listed,) = list_models(models_dir)
    assert listed.name == NAME
    assert listed.path == models_dir / NAME
    assert listed.weights_sha256 == prepared.weights_sha256
    assert resolve_base_model(NAME, models_dir) == str(models_dir / NAME)


@pytest.mark.slow
def test_cli_prepare_with_log_json_reports_the_skip(
    prepared: PreparedModel, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EVOLORA_PATHS__DATA_DIR", str(data_dir))

    result = CliRunner().invoke(
        app, ["--log-json", "models", "prepare", NAME, "--config", "default", "--json"]
    )

    assert result.exit_code == 0, result.stderr
    reported = json.loads(result.stdout)
    assert reported["skipped"] is True
    assert reported["weights_sha256"] == prepared.weights_sha256
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "model.prepare.skipped" and e["name"] == NAME for e in events)
    assert all({"level", "timestamp", "event"} <= set(e) for e in events)


# --- errors, no conversion needed ------------------------------------------------------


def test_unknown_name_lists_the_known_names(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        prepare_model("llama-70b", tmp_path)
    assert "'llama-70b'" in str(caught.value)
    for known in PACKAGED_MODELS:
        assert known in str(caught.value)
    assert not (tmp_path / "llama-70b").exists()


def test_unsupported_dtype_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="bfloat16, float16, float32"):
        prepare_model(NAME, tmp_path, dtype="int3")
    assert list(tmp_path.iterdir()) == []


def test_resolve_unprepared_packaged_name_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"run `evolora models prepare {NAME}`"):
        resolve_base_model(NAME, tmp_path / "models")


def test_resolve_folder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "weights-only").mkdir()
    with pytest.raises(ModelError, match=r"has no config\.json"):
        resolve_base_model(str(tmp_path / "weights-only"), tmp_path / "models")


def test_resolve_local_hf_folder_and_hub_id(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tiny_model_dir), tmp_path) == str(tiny_model_dir)
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M", tmp_path) == (
        "HuggingFaceTB/SmolLM2-135M"
    )
    # A folder evolora did not prepare: its checksum is computed from the weights.
    assert base_model_checksum(str(tiny_model_dir)) == sha256_file(
        tiny_model_dir / WEIGHTS_NAME
    )


def test_list_models_skips_folders_that_are_not_prepared_models(tmp_path: Path) -> None:
    assert list_models(tmp_path / "absent") == []
    manifest = {
        "name": "m", "source": {"path": "/x.gguf", "sha256": "a"}, "weights_sha256": "b",
        "dtype": "bfloat16", "size_bytes": 1, "prepared_at": "2026-01-01T00:00:00Z",
    }
    for folder in ("m", ".m-staging123", "no-manifest"):
        (tmp_path / folder).mkdir()
    (tmp_path / "m" / MANIFEST_NAME).write_text(json.dumps(manifest))
    # A staging folder gets its manifest just before the rename: it is not a model yet.
    (tmp_path / ".m-staging123" / MANIFEST_NAME).write_text(json.dumps(manifest))
    (tmp_path / "stray-file").write_text("")

    assert [m.path.name for m in list_models(tmp_path)] == ["m"]
