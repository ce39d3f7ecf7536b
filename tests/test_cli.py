"""The `evolora` command line, driven through Typer's runner on the real app."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli.main import app
from evolora.models import PACKAGED_MODELS
from evolora.settings import ConfigError, load_settings

runner = CliRunner()


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the app, so a new command is covered automatically."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if hasattr(command, "commands"):  # a group (Typer vendors its own Click classes)
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


ROOT = typer.main.get_command(app)
COMMANDS = command_paths(ROOT)


def squash(text: str) -> str:
    """Text without whitespace or box borders: rich wraps and frames lines at any width."""
    return "".join(text.replace("│", " ").split())


def command_at(path: tuple[str, ...]) -> Any:
    command = ROOT
    for name in path:
        command = command.commands[name]
    return command


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No EVOLORA_* variable leaks in; data lives under tmp_path."""
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EVOLORA_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(tmp_path / "mlruns"))


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "A self-improving local LLM agent" in result.stdout
    top_level = [path[0] for path in COMMANDS if len(path) == 1]
    assert {"config", "doctor", "models"} <= set(top_level)
    for name in top_level:
        assert f" {name} " in result.stdout.replace("│", " ")


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_that_describes_it(path: tuple[str, ...]) -> None:
    description = (command_at(path).help or "").strip().splitlines()
    assert description, f"`evolora {' '.join(path)}` has no docstring"

    result = runner.invoke(app, [*path, "--help"])

    assert result.exit_code == 0, result.output
    assert squash(f"Usage: evolora {' '.join(path)}") in squash(result.stdout)
    assert squash(description[0]) in squash(result.stdout)


def test_config_prints_the_resolved_settings_as_json() -> None:
    result = runner.invoke(app, ["config", "--config", "tiny"])

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["name"] == "tiny"
    assert printed["train"]["rank"] == 4
    assert printed == load_settings("tiny").resolved_dict()


def test_config_honours_env_overrides_and_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_TRAIN__RANK", "9")
    monkeypatch.setenv("EVOLORA_EVOLUTION__LLM_API_KEY", "sk-cli-secret-42")

    result = runner.invoke(app, ["config", "-c", "tiny"])

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["train"]["rank"] == 9
    assert printed["evolution"]["llm_api_key"] == "**********"
    assert "sk-cli-secret-42" not in result.output


def test_config_follows_evolora_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_CONFIG", "demo")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "demo"


def test_bad_config_exits_2_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "trian": {"rank": 3},
        "train": {"rank": "lots", "dropout": 1.5, "lr_scheduler": "cosin"},
        "evolution": {"population_size": 2, "elite": 3},
        "serving": {"host": "0.0.0.0", "auth_enabled": False},
    }))
    with pytest.raises(ConfigError) as expected:
        load_settings(bad)

    result = runner.invoke(app, ["config", "--config", str(bad)])

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    stderr = squash(result.stderr)
    assert len(expected.value.problems) == 6
    for problem in expected.value.problems:
        assert squash(problem) in stderr, problem
    assert squash("did you mean `train`?") in stderr


def test_missing_config_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["doctor", "--config", "no-such-config"])
    assert result.exit_code == 2
    assert "file not found" in result.stderr
    assert "Traceback" not in result.output


def test_env_list_that_is_not_json_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_TRAIN__TARGET_MODULES", "q_proj,v_proj")
    result = runner.invoke(app, ["config", "-c", "tiny"])
    assert result.exit_code == 2
    assert "EVOLORA_TRAIN__TARGET_MODULES" in squash(result.stderr)
    assert "Traceback" not in result.output


def test_models_list_json_with_nothing_prepared() -> None:
    result = runner.invoke(app, ["models", "list", "--json", "-c", "tiny"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"prepared": [], "packaged": list(PACKAGED_MODELS)}


def test_models_list_table_says_how_to_prepare() -> None:
    result = runner.invoke(app, ["models", "list", "-c", "tiny"])
    assert result.exit_code == 0, result.output
    for name in PACKAGED_MODELS:
        assert squash(f"evolora models prepare {name}") in squash(result.stdout)


def test_models_prepare_unknown_name_exits_2_with_the_known_names() -> None:
    result = runner.invoke(app, ["models", "prepare", "llama-70b", "-c", "tiny"])
    assert result.exit_code == 2
    err = squash(result.stderr)
    assert squash("'llama-70b' is not a packaged model") in err
    assert squash(", ".join(PACKAGED_MODELS)) in err


def test_models_prepare_local_folder_is_a_no_op(tmp_path: Path) -> None:
    (tmp_path / "my-hf-model").mkdir()
    result = runner.invoke(app, ["models", "prepare", str(tmp_path / "my-hf-model"), "-c", "tiny"])
    assert result.exit_code == 0, result.output
    assert "nothing to prepare" in result.stdout
    assert not (Path(os.environ["EVOLORA_PATHS__DATA_DIR"]) / "models").exists()


def test_unknown_log_level_exits_2_without_traceback() -> None:
    result = runner.invoke(app, ["--log-level", "loud", "config", "-c", "tiny"])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_error_text_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dtype: '[bold]half'\n")
    result = runner.invoke(app, ["config", "--config", str(bad)])
    assert result.exit_code == 2
    assert "[bold]half" in result.stderr
