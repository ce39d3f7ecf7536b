"""Settings: every shipped YAML loads, EVOLORA_* variables win, bad configs list every fault."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from evolora.paths import CONFIGS_DIR
from evolora.settings import ConfigError, Settings, load_settings

CONFIG_FILES = sorted(CONFIGS_DIR.glob("*.yaml"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EVOLORA_* variable of the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)


def write_yaml(folder: Path, data: Any, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train.rank": 4, ...}` for every scalar or list leaf of a nested mapping."""
    found: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(leaves(value, f"{dotted}."))
        else:
            found[dotted] = value
    return found


def problem_for(error: ConfigError, key: str) -> str:
    """The one problem line about `key` (fails the test if there is not exactly one)."""
    matches = [p for p in error.problems if p.split(":", 1)[0] == key]
    assert len(matches) == 1, f"expected one problem for {key!r}, got {error.problems}"
    return matches[0]


def test_configs_folder_is_not_empty() -> None:
    # Guards the parametrisation below: an empty glob would silently test nothing.
    assert {"default", "demo", "tiny"} <= {path.stem for path in CONFIG_FILES}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def test_every_shipped_config_loads_with_its_own_values(path: Path) -> None:
    settings = load_settings(path)
    by_name = load_settings(path.stem)

    assert settings.name == path.stem
    assert by_name.resolved_dict() == settings.resolved_dict()
    resolved = leaves(settings.resolved_dict())
    for key, value in leaves(yaml.safe_load(path.read_text())).items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            continue  # teacher.backends: compared below, item by item
        assert resolved[key] == value, f"{path.name}: {key}"
    backends = yaml.safe_load(path.read_text()).get("teacher", {}).get("backends", [])
    assert [b["kind"] for b in backends] == [b.kind for b in settings.teacher.backends]
    json.dumps(settings.resolved_dict())  # saved beside artifacts: must be JSON-able


def test_no_config_and_no_variable_means_default() -> None:
    assert load_settings().name == "default"


def test_evolora_config_variable_picks_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_CONFIG", "tiny")
    assert load_settings().name == "tiny"
    assert load_settings().train.rank == 4
    assert load_settings("demo").name == "demo"  # an explicit argument beats the variable


def test_env_variable_wins_over_yaml_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings("tiny").train.rank == 4
    monkeypatch.setenv("EVOLORA_TRAIN__RANK", "7")

    settings = load_settings("tiny")

    assert settings.train.rank == 7
    assert settings.train.alpha == 8  # the rest of the YAML section still applies
    assert settings.train.target_modules == ["q_proj", "v_proj"]


def test_env_list_and_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_TRAIN__TARGET_MODULES", '["q_proj", "k_proj", "o_proj"]')
    monkeypatch.setenv("EVOLORA_EVOLUTION__LLM_API_KEY", "sk-evolution-secret")
    backends = [{"kind": "openai", "url": "http://127.0.0.1:9999/v1", "models": ["m1", "m2"],
                 "api_key": "sk-teacher-secret"}]
    monkeypatch.setenv("EVOLORA_TEACHER__BACKENDS", json.dumps(backends))

    settings = load_settings("tiny")

    assert settings.train.target_modules == ["q_proj", "k_proj", "o_proj"]
    assert settings.evolution.llm_api_key is not None
    assert settings.evolution.llm_api_key.get_secret_value() == "sk-evolution-secret"
    (backend,) = settings.teacher.backends
    assert (backend.kind, backend.models) == ("openai", ["m1", "m2"])
    assert backend.api_key is not None
    assert backend.api_key.get_secret_value() == "sk-teacher-secret"


def test_resolved_dict_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_EVOLUTION__LLM_API_KEY", "sk-evolution-secret")
    backends = [{"kind": "ollama", "url": "http://127.0.0.1:11434", "models": ["m"],
                 "api_key": "sk-teacher-secret"}]
    monkeypatch.setenv("EVOLORA_TEACHER__BACKENDS", json.dumps(backends))
    settings = load_settings("tiny")

    resolved = settings.resolved_dict()
    text = json.dumps(resolved) + repr(settings) + str(settings)

    assert "sk-evolution-secret" not in text
    assert "sk-teacher-secret" not in text
    assert resolved["evolution"]["llm_api_key"] == "**********"
    assert resolved["teacher"]["backends"][0]["api_key"] == "**********"
    assert resolved["evolution"]["llm_model"] == "smollm2"  # only secrets are masked


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_TRAIN__RANK", "lots")
    with pytest.raises(ConfigError) as caught:
        load_settings("tiny")
    problem = problem_for(caught.value, "train.rank")
    assert "'lots'" in problem
    assert "EVOLORA_TRAIN__RANK" in problem


def test_env_list_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLORA_TRAIN__TARGET_MODULES", "q_proj,v_proj")
    with pytest.raises(ConfigError) as caught:
        load_settings("tiny")
    (problem,) = caught.value.problems
    assert "EVOLORA_TRAIN__TARGET_MODULES" in problem
    assert "JSON" in problem


def test_every_problem_is_reported_at_once_with_key_and_fix(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {
        "trian": {"rank": 3},                      # unknown section, a typo of `train`
        "train": {
            "rank": "lots",                          # bad type
            "dropout": 1.5,                          # out of range
            "lr_scheduler": "cosin",                 # invalid literal
            "lerning_rate": 0.01,                    # unknown key, a typo
        },
        "evolution": {"population_size": 2, "elite": 3},     # elite > population
        "serving": {"host": "0.0.0.0", "auth_enabled": False},  # open service, no auth
    })

    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    error = caught.value

    assert len(error.problems) == 7, error.problems
    assert f"7 problem(s) in config {path}" in str(error)
    assert "did you mean `train`?" in problem_for(error, "trian")
    assert "did you mean `learning_rate`?" in problem_for(error, "train.lerning_rate")
    rank = problem_for(error, "train.rank")
    assert "valid integer" in rank and "'lots'" in rank and "EVOLORA_TRAIN__RANK" in rank
    dropout = problem_for(error, "train.dropout")
    assert "less than 1" in dropout and "1.5" in dropout and "fix:" in dropout
    scheduler = problem_for(error, "train.lr_scheduler")
    assert "'cosine', 'linear' or 'constant'" in scheduler and "'cosin'" in scheduler
    elite = problem_for(error, "evolution")
    assert "elite (3) cannot exceed population_size (2)" in elite
    assert "lower evolution.elite or raise evolution.population_size" in elite
    serving = problem_for(error, "serving")
    assert "0.0.0.0" in serving and "set host to 127.0.0.1 or enable auth" in serving
    for problem in error.problems:  # every line is in str(error), one per line
        assert f"  - {problem}" in str(error).splitlines()


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"memory": {"zzz_entirely_unrelated": 1}})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problem = problem_for(caught.value, "memory.zzz_entirely_unrelated")
    assert "known keys here: chroma_path, chroma_url, max_per_user, top_k" in problem


def test_problem_in_a_list_item_has_its_index_and_never_echoes_a_secret(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"teacher": {"backends": [
        {"kind": "embedded"},
        {"kind": "ollama", "url": "http://127.0.0.1:11434", "models": ["m"],
         "api_key": 987654321, "timeout_s": "slow"},
        {"kind": "openai", "models": ["m"]},
    ]}})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    error = caught.value

    assert "987654321" not in str(error)
    assert "(got ***)" in problem_for(error, "teacher.backends.1.api_key")
    assert "'slow'" in problem_for(error, "teacher.backends.1.timeout_s")
    assert "needs `url`" in problem_for(error, "teacher.backends.2")
    assert len(error.problems) == 3


def test_ollama_teacher_needs_models(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"teacher": {"backends": [
        {"kind": "ollama", "url": "http://127.0.0.1:11434"}]}})
    with pytest.raises(ConfigError, match="at least one entry in `models`"):
        load_settings(path)


def test_auth_may_be_off_on_loopback(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"serving": {"host": "localhost", "auth_enabled": False}})
    assert load_settings(path).serving.auth_enabled is False


def test_service_limits_are_checked_against_each_other(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"serving": {"max_prompt_tokens": 2048, "slot_context": 2048,
                                             "allowed_hosts": ["http://evil.example/"]}})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    hosts = problem_for(caught.value, "serving.allowed_hosts")
    assert "'http://evil.example/'" in hosts and "without scheme or path" in hosts
    # The slot holds prompt and reply: a prompt limit of the whole slot leaves no reply.
    path = write_yaml(tmp_path, {"serving": {"max_prompt_tokens": 2048, "slot_context": 2048}})
    with pytest.raises(ConfigError, match=r"max_prompt_tokens \(2048\) must be below "
                                          r"slot_context \(2048\)"):
        load_settings(path)
    path = write_yaml(tmp_path, {"serving": {"allowed_hosts": ["MyBox", "[::1]:3000"]}})
    assert load_settings(path).serving.allowed_hosts == ["mybox", "[::1]:3000"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings("no-such-config")
    (problem,) = caught.value.problems
    assert "file not found" in problem
    assert "tiny" in problem and "default" in problem  # the names one could pass instead
    assert caught.value.source == str(CONFIGS_DIR / "no-such-config.yaml")

    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.yaml")


def test_yaml_that_is_not_a_mapping_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, "- train\n- model\n"))
    assert caught.value.problems == ["the top level must be a mapping of sections"]


def test_broken_yaml_syntax_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, "train: [1, 2\n"))
    (problem,) = caught.value.problems
    assert problem.startswith("not valid YAML")
    assert "line" in problem


def test_empty_yaml_means_all_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_yaml(tmp_path, "", name="empty.yaml"))
    assert settings.name == "empty"
    assert settings.resolved_dict() | {"name": "x"} == Settings().resolved_dict() | {"name": "x"}


def test_default_tracking_uri_is_sqlite_under_mlruns_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(tmp_path / "runs"))
    paths = load_settings("tiny").paths

    assert paths.tracking_uri is None
    assert paths.resolved_tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert paths.artifact_root == tmp_path / "runs" / "artifacts"

    monkeypatch.setenv("EVOLORA_PATHS__TRACKING_URI", "http://127.0.0.1:5000")
    assert load_settings("tiny").paths.resolved_tracking_uri == "http://127.0.0.1:5000"


def test_relative_mlruns_dir_gives_an_absolute_sqlite_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", "runs")
    uri = load_settings("tiny").paths.resolved_tracking_uri
    # sqlite:/// + an absolute path: four slashes, pointing inside the working directory.
    assert uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")
