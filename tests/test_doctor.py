"""`evolora doctor` on this machine: real checks, real sockets, real MLflow stores."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.doctor import (
    check_engine,
    check_gpu,
    check_mlflow,
    check_model,
    check_teachers,
    checks_as_json,
    run_checks,
)
from cli.main import app
from evolora.settings import Settings, load_settings

EXPECTED_CHECKS = ["python", "packages", "torch device", "gpu", "ram", "disk", "base model",
                   "engine",
                   "mlflow", "prefect", "teacher"]


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A 127.0.0.1 port with a real listening socket for the test's duration."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def with_ollama_teacher(url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("EVOLORA_TEACHER__ENABLED", "true")
    backends = [{"kind": "ollama", "url": url, "models": ["qwen2.5:0.5b"]}, {"kind": "embedded"}]
    monkeypatch.setenv("EVOLORA_TEACHER__BACKENDS", json.dumps(backends))
    return load_settings("tiny")


def test_run_checks_on_this_machine(tiny_settings: Settings) -> None:
    checks = run_checks(tiny_settings)
    by_name = {check.name: check for check in checks}

    assert [c.name for c in checks] == EXPECTED_CHECKS
    assert [c for c in checks if c.status == "fail"] == []
    assert all(c.status in ("ok", "warn") and c.detail for c in checks)
    assert all(c.fix for c in checks if c.status == "warn")  # every warning says what to do
    assert by_name["base model"].status == "ok"
    assert str(tiny_settings.model.base) in by_name["base model"].detail
    assert by_name["mlflow"].status == "ok"
    assert (tiny_settings.paths.mlruns_dir / "mlflow.db").is_file()  # the store really opened
    assert json.loads(json.dumps(checks_as_json(checks)))[0]["name"] == "python"


def test_gpu_check_says_no_gpu_cleanly() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    check = check_gpu()
    assert check.status == "ok"
    assert check.detail.startswith("no GPU")


def test_model_check_warns_when_the_packaged_model_is_not_prepared(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOLORA_MODEL__BASE", "smollm2-135m")
    settings = load_settings("tiny")
    assert not settings.paths.models_dir.exists()  # tmp data dir: nothing prepared there

    check = check_model(settings)

    assert check.status == "warn"
    assert "'smollm2-135m' is not prepared" in check.detail
    assert "evolora models prepare smollm2-135m" in check.fix


def test_model_check_is_ok_for_a_local_hf_folder(tiny_settings: Settings) -> None:
    check = check_model(tiny_settings)
    assert check.status == "ok"
    assert "not prepared by evolora" in check.detail
    assert check.fix == ""


def test_model_check_warns_for_a_folder_without_config(
    tiny_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "not-a-model").mkdir()
    monkeypatch.setenv("EVOLORA_MODEL__BASE", str(tmp_path / "not-a-model"))

    check = check_model(load_settings("tiny"))

    assert check.status == "warn"
    assert "no config.json" in check.detail
    assert "point model.base at an HF folder" in check.fix
    assert "models prepare" not in check.fix  # preparing cannot fix a local folder


def test_model_check_warns_for_a_hub_id_while_offline(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EVOLORA_MODEL__BASE", "HuggingFaceTB/SmolLM2-135M-Instruct")

    check = check_model(load_settings("tiny"))

    assert check.status == "warn"
    assert "hub" in check.detail
    assert "HF_HUB_OFFLINE=0" in check.fix


def test_unreachable_ollama_teacher_warns_with_a_fix(
    tiny_settings: Settings, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    settings = with_ollama_teacher(url, monkeypatch)

    started = time.perf_counter()
    ollama, embedded = check_teachers(settings)

    assert time.perf_counter() - started < 5
    assert (ollama.name, ollama.status) == ("teacher[0] ollama", "warn")
    assert f"{url} not reachable" in ollama.detail
    assert "start the ollama server or remove this backend" in ollama.fix
    assert (embedded.name, embedded.status) == ("teacher[1] embedded", "ok")


def test_reachable_ollama_teacher_is_ok(
    tiny_settings: Settings, listening_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = with_ollama_teacher(f"http://127.0.0.1:{listening_port}", monkeypatch)
    ollama = check_teachers(settings)[0]
    assert ollama.status == "ok"
    assert "qwen2.5:0.5b" in ollama.detail


def test_disabled_teacher_is_one_ok_line(tiny_settings: Settings) -> None:
    assert not tiny_settings.teacher.enabled
    (check,) = check_teachers(tiny_settings)
    assert (check.name, check.status) == ("teacher", "ok")


def test_mlflow_server_that_is_down_fails_fast(
    tiny_settings: Settings, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOLORA_PATHS__TRACKING_URI", f"http://127.0.0.1:{closed_port}")
    started = time.perf_counter()
    check = check_mlflow(load_settings("tiny"))
    assert time.perf_counter() - started < 5  # MLflow's own client would retry for minutes
    assert check.status == "fail"
    assert "not reachable" in check.detail
    assert "paths.tracking_uri" in check.fix


def test_cli_doctor_json_is_parseable_and_exits_0(tiny_settings: Settings) -> None:
    result = CliRunner().invoke(app, ["doctor", "--config", "tiny", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["config"] == "tiny"
    assert [c["name"] for c in report["checks"]] == EXPECTED_CHECKS
    assert {c["status"] for c in report["checks"]} <= {"ok", "warn"}
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])


def test_cli_doctor_exits_1_when_a_check_fails(
    tiny_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SQLite store whose folder would have to live inside a regular file: cannot be made,
    # not even by root.
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("EVOLORA_PATHS__TRACKING_URI", f"sqlite:///{tmp_path}/a-file/mlflow.db")

    as_json = CliRunner().invoke(app, ["doctor", "--config", "tiny", "--json"])
    as_text = CliRunner().invoke(app, ["doctor", "--config", "tiny"])

    assert as_json.exit_code == 1, as_json.output
    report = json.loads(as_json.stdout)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["mlflow"]
    assert "a-file" in failed[0]["detail"]
    assert failed[0]["fix"]
    # The person-readable report: every check on its own line, the failure with its fix.
    assert as_text.exit_code == 1, as_text.output
    assert "evolora doctor (config: tiny)" in as_text.stdout
    for name in EXPECTED_CHECKS:
        assert name in as_text.stdout
    assert "fail mlflow" in " ".join(as_text.stdout.split())
    assert "fix: check paths.tracking_uri" in " ".join(as_text.stdout.split())


def test_engine_check_names_the_gguf_or_says_how_to_get_one(
    tiny_settings: Settings, tiny_model_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    check = check_engine(tiny_settings)
    assert check.status == "ok" and "llama.cpp on model.gguf" in check.detail

    no_gguf = tmp_path / "hf-only"
    no_gguf.mkdir()
    (no_gguf / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    monkeypatch.setenv("EVOLORA_MODEL__BASE", str(no_gguf))
    check = check_engine(load_settings("tiny"))
    assert check.status == "warn" and "no GGUF for the base model" in check.detail
    assert "model.gguf" in check.fix and "serving.engine: transformers" in check.fix

    monkeypatch.setenv("EVOLORA_SERVING__ENGINE", "transformers")
    assert check_engine(load_settings("tiny")).status == "ok"

