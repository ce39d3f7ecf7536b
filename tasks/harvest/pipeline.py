"""The harvest step of a cycle: verified serving traces mixed into the training split."""

from __future__ import annotations

from pathlib import Path

import mlflow

from evolora.logs import get_logger
from evolora.settings import Settings
from evolora.tracking import start_step_run
from evolora.vocabulary import STEP_TAG
from tasks.data import load_split, log_dataset_to_mlflow
from tasks.records import DataSplits, HarvestReport

log = get_logger(__name__)


def harvest_into_training(settings: Settings, data: DataSplits, *, since: float | None,
                          parent_run_id: str | None = None) -> DataSplits:
    """Mix verified serving traces since `since` into the train split (closing the loop).

    Returns `data` with `train_path`/`hashes["train"]` pointing at the mixed split when any
    trace was kept, and its `harvest` report: counts, drops by reason, and the watermark the
    next cycle harvests from. No service database yet means nothing to harvest.
    """
    from agent.tools import default_tools
    from storage.store import Store
    from tasks.data import dataset_hash, save_split
    from tasks.harvest.traces import harvest_traces, mix_with_synthetic

    unchanged = data.model_copy(update={"harvest": HarvestReport(watermark=since)})
    if not settings.data.harvest or settings.data.harvest_max_rows == 0:
        return unchanged
    store = Store.from_settings(settings)
    try:
        test_questions = list(load_split(data.test_path)["question"])
        rows, report = harvest_traces(store, since=since,
                                      max_rows=settings.data.harvest_max_rows,
                                      tools=default_tools(), held_out=test_questions,
                                      max_per_user=settings.data.harvest_max_per_user,
                                      users=settings.data.harvest_users)
    finally:
        store.close()
    synthetic = [dict(row) for row in load_split(data.train_path)]
    mixed = mix_with_synthetic(synthetic, rows, max_share=settings.data.harvest_max_share)
    used = len(mixed) - len(synthetic)
    harvest = HarvestReport(kept=used, candidates=len(rows), dropped=report.get("dropped", {}),
                            watermark=report.get("watermark", since))
    result = data.model_copy(update={"harvest": harvest})
    if used:
        path, content_hash = save_split(
            settings.paths.data_dir / "datasets", "train", mixed,
            {"harvested_rows": used, "synthetic_hash": data.hashes["train"]})
        result = result.model_copy(update={
            "train_path": Path(path),
            "hashes": {**data.hashes, "train": content_hash, "harvested": dataset_hash(rows)}})
        with start_step_run("harvest", parent_run_id, {STEP_TAG: "harvest"}):
            log_dataset_to_mlflow(load_split(path), "evolora-train-with-harvest",
                                  content_hash, "training")
            mlflow.log_metrics({"harvested_rows": float(used),
                                "harvest_candidates": float(len(rows))})
            mlflow.log_dict(harvest.model_dump(mode="json"), "harvest_report.json")
    log.info("harvest.done", kept=used, candidates=len(rows), dropped=harvest.dropped)
    return result
