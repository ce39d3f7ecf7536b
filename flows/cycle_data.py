"""The cycle's data steps: tonight's problems, the champion's own attempts, the mix.

    generate_data(train_seed=night) -> mix_in_serving_traces -> attempt_with_champion
        -> compose_night_data (template + self + harvested + replay, each within its share)

Each night draws fresh training problems (`data.seed` + the cycles before it), the
champion attempts a fresh pool of its own, and earlier nights' rows are replayed, so the
nights build on each other without training on the same rows or on their own outputs alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task

from evolora.logs import get_logger
from evolora.settings import Settings
from evolora.tracking import start_step_run
from evolora.vocabulary import STEP_TAG
from tasks.records import DataSplits, Member, SelfAttemptReport

log = get_logger(__name__)


def train_seed(settings: Settings, night: int) -> int:
    """The seed of a night's training problems: new problems each night, unless fixed."""
    return settings.data.seed + (night if settings.data.fresh_train_each_cycle else 0)


@task(name="self-attempts")
def attempt_with_champion(settings: Settings, model_path: str, data: DataSplits,
                          champion: Member, night: int, parent_run_id: str
                          ) -> tuple[Path, SelfAttemptReport]:
    """The champion's sampled attempts at a fresh pool of problems, saved as a split of
    training rows (its verified traces, else the program-written ones), and the report."""
    from agent.tools import default_tools
    from engines.engine import open_engine
    from tasks.data import load_split, save_split
    from tasks.evaluate.runner import BATCH_GENERATION_TIMEOUT_S
    from tasks.harvest.self_attempts import attempt_pool, attempt_problems, yield_metrics

    tools = default_tools()
    held_out = [q for split in ("test", "eval") for q in load_split(data.path(split))["question"]]
    if data.continuity_test_path is not None:
        held_out += list(load_split(data.continuity_test_path)["question"])
    pool = attempt_pool(settings.data, seed=train_seed(settings, night), held_out=held_out,
                        tools=tools)
    engine = open_engine(settings, model_path, adapters={champion.id: champion.adapter_dir},
                         generation_timeout_s=BATCH_GENERATION_TIMEOUT_S)
    try:
        rows, report = attempt_problems(
            engine, champion.id, pool, attempts=settings.data.self_attempts,
            temperature=settings.data.self_temperature,
            max_new_tokens=settings.model.max_new_tokens, tools=tools, champion=champion.id,
            seed=night)
    finally:
        engine.close()
    path, _hash = save_split(settings.paths.data_dir / "datasets", "self", rows,
                             {"report": report.model_dump(mode="json")})
    with start_step_run("self-attempts", parent_run_id, {STEP_TAG: "self_attempts",
                                                          "evolora.champion": champion.id}):
        mlflow.log_metrics(yield_metrics(report))
        mlflow.log_dict(report.model_dump(mode="json"), "self_attempts.json")
    log.info("self_attempts.done", champion=champion.id, problems=sum(report.problems.values()),
             solved=sum(report.solved.values()), seconds=report.seconds)
    return path, report


@task(name="compose-training-mix")
def compose_night_data(settings: Settings, data: DataSplits, self_rows: Path | None,
                       self_report: SelfAttemptReport | None, replay_from: list[Path],
                       night: int, parent_run_id: str) -> DataSplits:
    """The splits with tonight's training mix as the train split, logged with its report."""
    from tasks.data import dataset_hash, load_split, log_dataset_to_mlflow, save_split
    from tasks.harvest.mix import compose_mix, mix_metrics

    train = [dict(row) for row in load_split(data.train_path)]
    pool = [dict(row) for row in load_split(self_rows)] if self_rows else []
    replay = [dict(row) for path in replay_from if path.is_dir() for row in load_split(path)]
    rows, report = compose_mix(train, pool, replay, settings.data, seed=night,
                               self_attempts=self_report)
    path, content_hash = save_split(settings.paths.data_dir / "datasets", "train", rows,
                                    {"mix": report.model_dump(mode="json"),
                                     "template_hash": data.hashes["train"]})
    with start_step_run("training-mix", parent_run_id, {STEP_TAG: "mix"}):
        log_dataset_to_mlflow(load_split(path), "evolora-train-mix", content_hash, "training")
        mlflow.log_metrics(mix_metrics(report))
        mlflow.log_dict(report.model_dump(mode="json"), "training_mix.json")
    log.info("mix.done", rows=report.rows, by_source=report.by_source,
             diversity=report.diversity)
    hashes = {**data.hashes, "train": content_hash, "template": data.hashes["train"]}
    if self_rows is not None:
        hashes["self"] = dataset_hash(pool)
    return data.model_copy(update={"train_path": Path(path), "hashes": hashes,
                                   "rows": {**data.rows, "train": len(rows)}, "mix": report})


def earlier_training_splits(cycles_dir: Path, current: str) -> list[Path]:
    """The training splits of the finished cycles before `current` (the replay's source)."""
    from flows.cycle_journal import STATE_FILE

    paths = []
    for folder in sorted(cycles_dir.iterdir()) if cycles_dir.is_dir() else []:
        state = folder / STATE_FILE
        if folder.name == current or not state.is_file():
            continue
        raw = json.loads(state.read_text())
        train = (raw.get("data") or {}).get("train_path")
        if raw.get("status") == "done" and train:
            paths.append(Path(train))
    return paths
