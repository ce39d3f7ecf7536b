"""The data step of a run: teacher (if any) -> verified splits -> MLflow dataset inputs."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import mlflow

from evolora.logs import get_logger
from evolora.models import PACKAGED_MODELS
from evolora.settings import Settings
from evolora.tracking import start_step_run
from tasks.data import build_splits, load_split, log_dataset_to_mlflow
from tasks.teacher import Teacher, paraphraser_or_none

log = get_logger(__name__)


def build_and_log_splits(settings: Settings, parent_run_id: str | None = None
                         ) -> dict[str, Any]:
    """Build (or reuse) the splits and log them to an MLflow `data` run.

    Returns JSON-able facts: each split's folder, content hash and row count, and the
    generation report (per-skill counts, drops by reason, diversity, teacher use).
    """
    with ExitStack() as stack:
        paraphrase = None
        teacher_used = "none"
        if settings.teacher.enabled and settings.data.paraphrase_fraction > 0:
            gguf = PACKAGED_MODELS["smollm2-135m"].gguf_path()
            teacher = stack.enter_context(Teacher(settings.teacher, embedded_gguf=gguf))
            # build_splits asks the teacher for data.paraphrase_fraction of the questions.
            paraphrase = paraphraser_or_none(teacher)
        bundle = build_splits(settings.data, settings.paths.data_dir, paraphrase=paraphrase)
        if paraphrase is not None:
            teacher_used = teacher.used or "none"

    splits = {"train": bundle.train_path, "eval": bundle.eval_path, "test": bundle.test_path}
    facts: dict[str, Any] = {f"{name}_path": str(path) for name, path in splits.items()}
    facts["hashes"] = dict(bundle.hashes)
    facts["report"] = bundle.report.to_dict() if hasattr(bundle.report, "to_dict") else {}
    facts["teacher"] = teacher_used
    facts["rows"] = {}
    with start_step_run("data", parent_run_id, {"evolora.step": "data",
                                                "evolora.teacher": teacher_used}):
        for name, path in splits.items():
            dataset = load_split(path)
            facts["rows"][name] = len(dataset)
            context = {"train": "training", "eval": "validation", "test": "testing"}[name]
            log_dataset_to_mlflow(dataset, f"evolora-{name}", bundle.hashes[name], context)
        mlflow.log_metrics({f"rows_{name}": float(n) for name, n in facts["rows"].items()})
        mlflow.log_dict(facts["report"], "data_report.json")
    log.info("data.ready", rows=facts["rows"], teacher=teacher_used,
             test_hash=bundle.hashes["test"][:12])
    return facts


def harvest_into_training(settings: Settings, data: dict[str, Any], *, since: float | None,
                          parent_run_id: str | None = None) -> dict[str, Any]:
    """Mix verified serving traces since `since` into the train split (closing the loop).

    Returns `data` with `train_path`/`hashes["train"]` pointing at the mixed split when any
    trace was kept, plus a `harvest` entry: counts, drops by reason, and the watermark the
    next cycle harvests from. No service database yet means nothing to harvest.
    """
    from agent.tools import default_tools
    from serving.store import Store
    from tasks.data import dataset_hash, save_split
    from tasks.harvest import harvest_traces, mix_with_synthetic

    facts = {**data, "harvest": {"kept": 0, "watermark": since, "dropped": {}}}
    if not settings.data.harvest or settings.data.harvest_max_rows == 0:
        return facts
    store = Store.from_settings(settings)
    try:
        test_questions = list(load_split(data["test_path"])["question"])
        rows, report = harvest_traces(store, since=since,
                                      max_rows=settings.data.harvest_max_rows,
                                      tools=default_tools(), held_out=test_questions)
    finally:
        store.close()
    synthetic = [dict(row) for row in load_split(data["train_path"])]
    mixed = mix_with_synthetic(synthetic, rows, max_share=settings.data.harvest_max_share)
    used = len(mixed) - len(synthetic)
    facts["harvest"] = {"kept": used, "candidates": len(rows),
                        "dropped": report.get("dropped", {}),
                        "watermark": report.get("watermark", since)}
    if used:
        path, content_hash = save_split(
            settings.paths.data_dir / "datasets", "train", mixed,
            {"harvested_rows": used, "synthetic_hash": data["hashes"]["train"]})
        facts["train_path"] = str(path)
        facts["hashes"] = {**data["hashes"], "train": content_hash,
                           "harvested": dataset_hash(rows)}
        with start_step_run("harvest", parent_run_id, {"evolora.step": "harvest"}):
            log_dataset_to_mlflow(load_split(path), "evolora-train-with-harvest",
                                  content_hash, "training")
            mlflow.log_metrics({"harvested_rows": float(used),
                                "harvest_candidates": float(len(rows))})
            mlflow.log_dict(facts["harvest"], "harvest_report.json")
    log.info("harvest.done", kept=used, candidates=len(rows), dropped=facts["harvest"]["dropped"])
    return facts
