"""The evolution cycle end to end on the tiny model: summary, registry, genealogy, resume.

A 2-layer random model scores nothing, so these check the cycle's bookkeeping and its
guarantees (elitism, promotion of a first champion, resume without retraining), not
accuracy. The accuracy story is `make demo` on SmolLM2 (numbers in the README).
"""

from __future__ import annotations

import json
import os
import re
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
from flows.cycle_journal import STATE_FILE, CycleJournal
from serving.ops_metrics import OperationsCollector
from tasks.records import CycleSummary, InitialRecipe, Member, Scores
from tasks.registry.versions import compare_checksums, version_checksums
from tasks.train.trainer import read_adapter_manifest
from tasks.train.trunk import TRUNK_DIR, decay_steps_for, read_trunk
from tests.support.adapters import adapter_distance

SUMMARY_KEYS = {"base", "best_initial", "generations", "champion", "promoted", "wall_s"}


@pytest.fixture
def cycle_env(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Tiny settings with three members (a generalist and two specialists), GA planning."""
    monkeypatch.setenv("EVOLORA_EVOLUTION__POPULATION_SIZE", "3")
    monkeypatch.setenv("EVOLORA_EVOLUTION__USE_AGENTS", "false")
    monkeypatch.setenv("EVOLORA_EVOLUTION__FINETUNE_STEPS", "2")
    # The champion attempts one fresh problem per skill, twice; a continuity test set too.
    monkeypatch.setenv("EVOLORA_DATA__SELF_PROBLEMS_PER_SKILL", "1")
    monkeypatch.setenv("EVOLORA_DATA__CONTINUITY_TEST_PER_SKILL", "1")
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
    # One progress line per stage, counted in the order they ran, then the summary table.
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/") and "generate data: done in" in lines[0]
    assert any(re.match(r"\[\d+/\d+\] train g0-m1 \(specialist: ", line) for line in lines)
    assert re.search(r"\n(\d+) of \1 stages done in ", result.output)
    assert "Map:" not in result.output and "it/s]" not in result.output
    assert set(json.loads(summary_path.read_text())) >= SUMMARY_KEYS
    summary = CycleSummary.model_validate_json(summary_path.read_text())
    for accuracy in (summary.base, summary.best_initial, summary.champion):
        assert 0.0 <= accuracy <= 1.0
    assert len(summary.generations) == cycle_env.evolution.generations
    generation = summary.generations[0]
    assert generation.policy == "ga"
    assert 0.0 <= generation.best_fitness <= 1.0
    # Elitism: a generation's best is never worse (on fitness) than the initial best.
    journal = CycleJournal.load(next((cycle_env.paths.data_dir / "cycles").iterdir()))
    assert journal is not None and journal.status == "done" and journal.summary == summary
    # The progress file the web console reads ends with the whole plan done.
    shown = json.loads((journal.folder / "progress.json").read_text())
    assert shown["state"] == "done" and shown["percent"] == 100.0 and shown["stage"] is None
    initial = [journal.members[f"g0-m{i}"] for i in range(3)]
    assert generation.best_fitness >= max(m.fitness for m in initial)
    # The specialists continued the generalist and were composed as the mean of their
    # deltas; the report compares the merge with each of its parents.
    for specialist in initial[1:]:
        assert isinstance(specialist.recipe, InitialRecipe)
        assert specialist.recipe.init_from == "g0-m0"
    merge = summary.specialist_merge
    assert merge is not None and set(merge.parents) == {"g0-m1", "g0-m2"}
    assert merge.rule == "mean (all continued g0-m0)" and merge.weights == [0.5, 0.5]
    # The challenger is the fittest on the eval split; only it is scored on the test sets,
    # and every comparison states its paired interval.
    assert summary.challenger_reason.startswith(summary.challenger_id)
    assert [m.id for m in journal.members.values() if m.test] == [summary.challenger_id]
    assert summary.challenger_continuity is not None
    assert summary.test_problems == 2 * len(cycle_env.data.skills)
    interval = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(\d+ won, \d+ lost of 12\)"
    assert re.fullmatch(interval, summary.comparisons[
        f"challenger {summary.challenger_id} vs base (test)"])
    assert summary.train_steps == sum(m.recipe.steps for m in initial) + sum(
        2 for m in journal.members.values()
        if m.generation and m.recipe.mutation.kind == "finetune")
    # No champion yet: no self-attempts, a mix of template rows only; the gate promotes.
    assert summary.self_yield is None and journal.night == 0
    assert summary.mix_rows == {"template": journal.data.rows["train"], "self": 0,
                                "harvested": 0, "replay": 0}
    assert summary.promoted is True

    setup_mlflow(cycle_env)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(
        cycle_env.evolution.registry_model_name, "champion")
    assert str(champion.version) == summary.registry_version
    tags = champion.tags
    assert "evolora.base_model_sha256" in tags
    assert "evolora.data_hashes" in tags
    assert any(key.startswith("evolora.sha256.") for key in tags)

    # The version carries each test problem's outcome, for the next night's paired gate.
    assert json.loads(tags["evolora.test_outcomes"])["split_hash"] == journal.data.hashes["test"]

    shown = CliRunner().invoke(app, ["registry", "show", "champion", "-c", "tiny", "--json"])
    assert shown.exit_code == 0, shown.output
    assert summary.challenger_id in shown.stdout
    # The version carries its GGUF LoRA for the llama.cpp engine, under its checksums.
    assert "evolora.sha256.adapter.gguf" in tags and summary.started_from is None
    # The generalist kept its trunk (adapter and optimizer state before its decay).
    generalist1 = journal.members["g0-m0"]
    trunk1 = read_trunk(journal.folder / TRUNK_DIR)
    assert trunk1 is not None and trunk1.cycle_id == journal.cycle_id
    assert trunk1.steps == generalist1.recipe.steps - decay_steps_for(
        generalist1.recipe.steps, cycle_env.evolution.trunk_decay_fraction)
    assert summary.trunk_steps == trunk1.steps

    # The next night builds on night 1: the champion (v1, downloaded and verified) makes
    # the attempts and is the gate's opponent; the generalist continues night 1's trunk
    # (the same run, before its decay) and the specialists continue that generalist.
    night2 = tmp_path / "night2.json"
    again = CliRunner().invoke(app, ["cycle", "-c", "tiny", "--new", "--summary", str(night2)])
    assert again.exit_code == 0, again.output
    second = CycleSummary.model_validate_json(night2.read_text())
    start = f"champion-v{summary.registry_version}"
    assert second.started_from == trunk1.member_id
    journal2 = CycleJournal.load(max((cycle_env.paths.data_dir / "cycles").iterdir()))
    assert journal2 is not None and journal2.cycle_id != journal.cycle_id
    assert journal2.warm_start is not None and journal2.warm_start.id == start
    assert compare_checksums(journal2.warm_start.adapter_dir, version_checksums(champion)) == []
    # Night 2 trains on fresh problems, its champion's attempts and a replay of night 1.
    assert journal2.night == 1
    assert journal2.data.hashes["template"] != journal.data.hashes["template"]
    report = journal2.self_report
    assert report is not None and report.champion == start
    assert sum(report.problems.values()) == len(cycle_env.data.skills)
    assert report.attempts == 2 * len(cycle_env.data.skills)
    assert report.self_rows + report.fallback_rows == len(cycle_env.data.skills)
    assert second.self_yield is not None and second.mix_rows["replay"] > 0
    assert second.mix_rows["self"] > 0
    # The gate paired the challenger with v1 on the same problems, and said so.
    assert f"vs champion v{summary.registry_version} (test)" in " ".join(second.comparisons)
    assert "paired on the same problems" in " ".join(second.gate_reasons) or (
        "significantly worse" in " ".join(second.gate_reasons)
        or "below the margin" in " ".join(second.gate_reasons))
    generalist = journal2.members["g0-m0"]
    assert isinstance(generalist.recipe, InitialRecipe)
    assert journal2.trunk == trunk1 and generalist.recipe.init_from == trunk1.member_id
    assert journal2.members["g0-m1"].recipe.init_from == "g0-m0"
    assert read_adapter_manifest(generalist.adapter_dir)["schedule"]["continues_trunk"] == (
        trunk1.member_id)
    # Trained further, not copied: the generalist's weights moved away from the trunk's,
    # and tonight's trunk has both nights' stable steps behind it.
    assert adapter_distance(generalist.adapter_dir, trunk1.folder) > 0
    trunk2 = read_trunk(journal2.folder / TRUNK_DIR)
    assert trunk2 is not None and trunk2.steps == 2 * trunk1.steps == second.trunk_steps


@pytest.mark.server
def test_a_config_outside_configs_reaches_the_flow(
    cycle_env: Settings, prefect_harness: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """EVOLORA_CONFIG naming a YAML file anywhere: the settings the CLI loaded are the ones
    the flow runs with (it used to reload the config by name from configs/)."""
    import yaml

    from evolora.paths import CONFIGS_DIR

    raw = yaml.safe_load((CONFIGS_DIR / "tiny.yaml").read_text())
    raw["data"]["test_per_skill"] = 1
    raw["evolution"]["registry_model_name"] = "outside-adapter"
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("EVOLORA_CONFIG", str(mine))
    monkeypatch.setenv("EVOLORA_EVOLUTION__GENERATIONS", "0")

    result = CliRunner().invoke(app, ["cycle", "--new", "--summary",
                                      str(tmp_path / "summary.json")])
    assert result.exit_code == 0, result.output
    journal = CycleJournal.load(next((cycle_env.paths.data_dir / "cycles").iterdir()))
    assert journal is not None and journal.data is not None
    assert journal.data.rows["test"] == len(cycle_env.data.skills)  # 1 per skill, as in mine
    setup_mlflow(cycle_env)
    client = MlflowClient()
    champion = client.get_model_version_by_alias("outside-adapter", "champion")
    assert str(champion.version) == journal.promotion.version
    parent = client.get_run(journal.parent_run_id)
    assert parent.data.params["name"] == "mine"


@pytest.mark.server
@pytest.mark.slow
def test_killed_cycle_resumes_without_retraining(cycle_env: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cli", "cycle", "-c", "tiny", "--new",
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
                if "1" in state.get("plans", {}):
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the cycle ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    state_file = files[0]
    before = CycleJournal.load(state_file.parent)
    assert before is not None and before.status == "running"
    trained = [m for m in before.members.values() if m.generation == 0]
    assert len(trained) == 3
    weights = {m.id: m.adapter_dir / "adapter_model.safetensors" for m in trained}
    mtimes = {k: p.stat().st_mtime_ns for k, p in weights.items()}

    resumed = subprocess.run(
        [sys.executable, "-m", "cli", "cycle", "-c", "tiny", "--summary",
         str(tmp_path / "second.json")], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = CycleSummary.model_validate_json((tmp_path / "second.json").read_text())
    assert summary.resumed is True
    assert summary.cycle_id == before.cycle_id
    # wall_s counts the killed run's recorded work too, not just the resumed run.
    assert summary.wall_s >= before.work_s + summary.wall_s_this_run - 1.0
    assert before.work_s > 0
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
    after = CycleJournal.load(state_file.parent)
    assert after is not None and after.status == "done"
    # The recovery is counted: the journal, the summary, the parent run, the exporter.
    assert after.resumes == 1 and summary.resumes == 1
    parent = client.get_run(after.parent_run_id)
    assert parent.data.metrics["cycle_resumes"] == 1
    assert parent.data.metrics["cycle_resume_down_s"] >= 0
    exported = {m.name: m.samples[0].value for m in OperationsCollector(
        cycle_env.paths.resolved_tracking_uri, cycle_env.evolution.registry_model_name,
        tmp_path / "no-recoveries.json").collect() if m.samples}
    assert exported["evolora_cycle_resumes"] == 1.0
    # The resumed run kept the plan the killed one recorded.
    assert after.plans[1] == before.plans[1]


def _member(member_id: str, eval_accuracy: float) -> Member:
    return Member(id=member_id, adapter_dir=Path("/adapters") / member_id, rank=4,
                  generation=int(member_id[1]),
                  recipe=InitialRecipe(role="generalist", skills=["units"], seed=0, steps=1),
                  eval=Scores(split="eval", metrics={"eval_accuracy": eval_accuracy}))


def test_the_challenger_is_the_fittest_on_the_eval_split_and_ties_keep_the_elder() -> None:
    from flows.cycle import pick_challenger

    initial = _member("g0-m0", 0.40)
    merge = _member("g1-c1", 0.57)
    chosen, reason = pick_challenger([initial, merge], initial)
    assert chosen is merge and reason == "g1-c1: the fittest on the eval split (0.570)"
    tie = _member("g1-c0", 0.40)
    chosen, _ = pick_challenger([tie, initial], initial)
    assert chosen is initial  # a child that only ties the best initial member is not it


def test_cycle_work_time_adds_up_over_runs(tmp_path: Path) -> None:
    first = CycleJournal.open(tmp_path)
    time.sleep(0.05)
    first.update(parent_run_id="run-1")
    worked = json.loads((first.folder / STATE_FILE).read_text())["work_s"]
    assert worked >= 0.05
    resumed = CycleJournal.open(tmp_path)
    assert resumed.cycle_id == first.cycle_id and resumed.work_s == worked
    assert resumed.worked_s >= worked


def test_a_journal_keeps_typed_records_and_refuses_a_corrupt_one(tmp_path: Path) -> None:
    journal = CycleJournal.open(tmp_path)
    member = journal.keep(_member("g0-m0", 0.5))
    journal.keep(member.with_scores(Scores(split="test", metrics={"test_accuracy": 0.25})))
    loaded = CycleJournal.load(journal.folder)
    assert loaded is not None
    assert loaded.members["g0-m0"].fitness == 0.5
    assert loaded.members["g0-m0"].test.accuracy == 0.25
    # A renamed field is caught on load, with the file named and the fix.
    raw = json.loads((journal.folder / STATE_FILE).read_text())
    raw["members"]["g0-m0"]["adapter_folder"] = raw["members"]["g0-m0"].pop("adapter_dir")
    (journal.folder / STATE_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"(?s)not a valid cycle journal.*move the folder away"):
        CycleJournal.load(journal.folder)


def test_an_unfinished_journal_of_the_old_format_is_not_resumed(tmp_path: Path) -> None:
    old = tmp_path / "20261101-000000"
    old.mkdir()
    (old / STATE_FILE).write_text(json.dumps({
        "cycle_id": old.name, "status": "running", "started_at": 0.0,
        "steps": {"data": {"harvest": {"watermark": 5.0}}}}))
    journal = CycleJournal.open(tmp_path)
    assert journal.cycle_id != old.name and journal.members == {}


def test_a_champion_starts_the_generalist_and_nothing_else(tmp_path: Path) -> None:
    from flows.cycle import continue_champion

    recipes = {
        "g0-m0": InitialRecipe(role="generalist", skills=["arithmetic"], seed=0, steps=4),
        "g0-m1": InitialRecipe(role="specialist", skills=["arithmetic"], seed=1, steps=2,
                               init_from="g0-m0"),
    }
    assert continue_champion(recipes, None) == recipes  # no champion: a cold start
    champion = Member(id="champion-v7", adapter_dir=tmp_path, rank=4, generation=0,
                      recipe=InitialRecipe(role="generalist", skills=["arithmetic"], seed=0,
                                           steps=0))
    warm = continue_champion(recipes, champion)
    assert warm["g0-m0"].init_from == "champion-v7"
    assert warm["g0-m1"].init_from == "g0-m0"  # the specialists continue the generalist

