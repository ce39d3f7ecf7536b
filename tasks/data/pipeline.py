"""The data step of a run: teacher (if any) -> verified splits -> MLflow dataset inputs."""

from __future__ import annotations

from contextlib import ExitStack

import mlflow

from evolora.logs import get_logger
from evolora.vocabulary import STEP_TAG
from evolora.models import cpu_threads, embedded_gguf_path
from evolora.settings import Settings
from evolora.tracking import start_step_run
from tasks.data.split_io import load_split, log_dataset_to_mlflow
from tasks.data.splits import build_splits
from tasks.data.teacher import Teacher, paraphraser_or_none
from tasks.records import DataSplits

log = get_logger(__name__)


def build_and_log_splits(settings: Settings, parent_run_id: str | None = None,
                         train_seed: int | None = None) -> DataSplits:
    """Build (or reuse) the splits and log them to an MLflow `data` run (`train_seed`: see
    `build_splits`).

    Returns each split's folder, content hash and row count, and the generation report
    (per-skill counts, drops by reason, diversity, teacher use).
    """
    with ExitStack() as stack:
        paraphrase = None
        teacher_used = "none"
        if settings.teacher.enabled and settings.data.paraphrase_fraction > 0:
            gguf = embedded_gguf_path(settings.teacher.embedded_model, settings.model.base)
            teacher = stack.enter_context(Teacher(
                settings.teacher, embedded_gguf=gguf,
                embedded_threads=cpu_threads(settings.model.threads)))
            # build_splits asks the teacher for data.paraphrase_fraction of the questions.
            paraphrase = paraphraser_or_none(teacher)
        bundle = build_splits(settings.data, settings.paths.data_dir, paraphrase=paraphrase,
                              train_seed=train_seed)
        if paraphrase is not None:
            teacher_used = teacher.used or "none"

    splits = dict(bundle.paths)
    report = bundle.report.to_dict() if hasattr(bundle.report, "to_dict") else {}
    rows: dict[str, int] = {}
    with start_step_run("data", parent_run_id, {STEP_TAG: "data",
                                                "evolora.teacher": teacher_used}):
        for name, path in splits.items():
            dataset = load_split(path)
            rows[name] = len(dataset)
            context = {"train": "training", "eval": "validation"}.get(name, "testing")
            log_dataset_to_mlflow(dataset, f"evolora-{name}", bundle.hashes[name], context)
        mlflow.log_metrics({f"rows_{name}": float(n) for name, n in rows.items()})
        mlflow.log_dict(report, "data_report.json")
    log.info("data.ready", rows=rows, teacher=teacher_used, test_hash=bundle.hashes["test"][:12])
    return DataSplits(train_path=bundle.train_path, eval_path=bundle.eval_path,
                      test_path=bundle.test_path, hashes=dict(bundle.hashes), rows=rows,
                      report=report, teacher=teacher_used,
                      continuity_test_path=bundle.paths.get("continuity"))
