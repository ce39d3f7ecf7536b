"""The evolution cycle end to end on the tiny model: summary, registry, genealogy, resume.

A 2-layer random model scores nothing, so these check the cycle's bookkeeping and its
guarantees (elitism, promotion of a first champion, resume without retraining), not
accuracy. The accuracy story is `make demo` on SmolLM2 (numbers in the README).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli.main import app
from evolora.settings import Settings
from evolora.tracking import setup_mlflow
from flows.cycle_journal import STATE_FILE

SUMMARY_KEYS = {"base", "best_initial", "generations", "champion", "promoted", "wall_s"}


@pytest.fixture
def cycle_env(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Tiny settings with three members (a generalist and two specialists), GA planning."""
    monkeypatch.setenv("EVOLORA_EVOLUTION__POPULATION_SIZE", "3")
    monkeypatch.setenv("EVOLORA_EVOLUTION__USE_AGENTS", "false")
    monkeypatch.setenv("EVOLORA_EVOLUTION__FINETUNE_STEPS", "2")
    return tiny_settings


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.server
def test_cycle_promotes_a_champion_with_its_genealogy(
    cycle_env: Settings, prefect_harness: None, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["cycle", "-c", "tiny", "--new", "--summary",
                                      str(summary_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_path.read_text())
    assert set(summary) >= SUMMARY_KEYS
    for key in ("base", "best_initial", "champion"):
        assert 0.0 <= summary[key] <= 1.0
    assert len(summary["generations"]) == cycle_env.evolution.generations
    generation = summary["generations"][0]
    assert generation["policy"] == "ga"
    assert 0.0 <= generation["best"] <= 1.0
    # Elitism: a generation's best is never worse (on fitness) than the initial best.
    state_dir = next((cycle_env.paths.data_dir / "cycles").iterdir())
    state = json.loads((state_dir / STATE_FILE).read_text())
    initial_best = max(state["steps"][f"eval/g0-m{i}/eval"]["eval_accuracy"] for i in range(3))
    assert generation["best_fitness"] >= initial_best
    # The specialists continued the generalist and were composed as the mean of their
    # deltas; the report compares the merge with each of its parents.
    for specialist in ("g0-m1", "g0-m2"):
        assert state["steps"][f"member/{specialist}"]["recipe"]["init_from"] == "g0-m0"
    merge = summary["specialist_merge"]
    assert merge is not None and set(merge["parents"]) == {"g0-m1", "g0-m2"}
    assert merge["rule"] == "mean (all continued g0-m0)" and merge["weights"] == [0.5, 0.5]
    # The challenger never falls below the best initial member on the test set.
    assert summary["challenger"] >= summary["best_initial"]
    assert summary["challenger_reason"].startswith(summary["challenger_id"])
    # First cycle: no champion yet, so the gate promotes.
    assert summary["promoted"] is True

    setup_mlflow(cycle_env)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(
        cycle_env.evolution.registry_model_name, "champion")
    assert str(champion.version) == str(summary["registry_version"])
    tags = champion.tags
    assert "evolora.base_model_sha256" in tags
    assert "evolora.data_hashes" in tags
    assert any(key.startswith("evolora.sha256.") for key in tags)

    shown = CliRunner().invoke(app, ["registry", "show", "champion", "-c", "tiny", "--json"])
    assert shown.exit_code == 0, shown.output
    assert summary["challenger_id"] in shown.stdout


@pytest.mark.server
@pytest.mark.slow
def test_killed_cycle_resumes_without_retraining(cycle_env: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cli.main", "cycle", "-c", "tiny", "--new",
               "--summary", str(tmp_path / "first.json")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    cycles = cycle_env.paths.data_dir / "cycles"
    deadline = time.monotonic() + 600
    state: dict = {}
    try:
        # Kill it once the first generation has its plan: mid-generation.
        while time.monotonic() < deadline and process.poll() is None:
            files = list(cycles.glob(f"*/{STATE_FILE}")) if cycles.exists() else []
            if files:
                state = json.loads(files[0].read_text())
                if "plan/1" in state["steps"]:
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the cycle ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    state_file = files[0]
    before = json.loads(state_file.read_text())
    assert before["status"] == "running"
    trained = [k for k in before["steps"] if k.startswith("member/g0-")]
    assert len(trained) == 3
    weights = {k: Path(before["steps"][k]["adapter_dir"]) / "adapter_model.safetensors"
               for k in trained}
    mtimes = {k: p.stat().st_mtime_ns for k, p in weights.items()}

    resumed = subprocess.run(
        [sys.executable, "-m", "cli.main", "cycle", "-c", "tiny", "--summary",
         str(tmp_path / "second.json")], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "second.json").read_text())
    assert summary["resumed"] is True
    assert summary["cycle_id"] == before["cycle_id"]
    # wall_s counts the killed run's recorded work too, not just the resumed run.
    assert summary["wall_s"] >= before["work_s"] + summary["wall_s_this_run"] - 1.0
    assert before["work_s"] > 0
    assert {k: p.stat().st_mtime_ns for k, p in weights.items()} == mtimes, \
        "finished adapters must not be retrained"
    setup_mlflow(cycle_env)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("evolora")
    train_runs = client.search_runs([experiment.experiment_id],
                                    filter_string="tags.`evolora.step` = 'train'")
    initial_runs = [r for r in train_runs
                    if r.data.tags.get("evolora.adapter", "").startswith("g0-")]
    assert len(initial_runs) == 3, "each initial member trained exactly once"
    after = json.loads(state_file.read_text())
    assert after["status"] == "done"


def test_the_challenger_is_the_fittest_unless_it_tests_below_the_best_initial() -> None:
    from flows.cycle import pick_challenger

    initial = {"id": "g0-m0", "fitness": 0.40}
    merge = {"id": "g1-c1", "fitness": 0.57}
    population = [initial, merge]
    # The latest demo: the merge was fittest on eval (0.57) but scored 0.333 vs 0.35 on test.
    test = {"g0-m0": 0.35, "g1-c1": 0.333}
    chosen, reason = pick_challenger(population, initial, lambda m: test[m["id"]])
    assert chosen is initial
    assert reason == ("g0-m0: the fittest, g1-c1, scored 0.333 on the test set, below the "
                      "best initial member's 0.350")
    test["g1-c1"] = 0.35  # a tie keeps the fittest
    chosen, reason = pick_challenger(population, initial, lambda m: test[m["id"]])
    assert chosen is merge and reason == "g1-c1: the fittest on the eval split"
    asked = []
    chosen, _ = pick_challenger([initial], initial, lambda m: asked.append(m) or 0.0)
    assert chosen is initial and asked == []  # nothing to compare: no test evaluation


def test_cycle_work_time_adds_up_over_runs(tmp_path: Path) -> None:
    from flows.cycle_journal import CycleState

    first = CycleState.open(tmp_path)
    time.sleep(0.05)
    first.record("data", {"rows": 1})
    worked = json.loads((first.folder / STATE_FILE).read_text())["work_s"]
    assert worked >= 0.05
    resumed = CycleState.open(tmp_path)
    assert resumed.cycle_id == first.cycle_id and resumed.work_before_s == worked
    assert resumed.work_s >= worked
