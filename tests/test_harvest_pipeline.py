"""Closing the loop: traces the service stored are mixed into the next cycle's training data."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from agent.tools import default_tools, run_tool
from evolora.settings import Settings
from evolora.tracking import setup_mlflow
from storage.store import Store
from tasks.data import build_and_log_splits, load_split
from tasks.harvest.pipeline import harvest_into_training

TOOLS = default_tools()


def served(store: Store, question: str, tool: str, argument: str, answer: str,
           feedback: int | None = None) -> None:
    observation = run_tool(TOOLS, tool, argument)
    trace = store.record_trace(
        user_id="alice", session_id=None, question=question,
        steps=[{"thought": "Use a tool.", "tool": tool, "argument": argument,
                "observation": observation}],
        final_answer=answer, error=None, adapter_version="3")
    if feedback is not None:
        store.set_feedback("alice", trace, feedback)


def test_harvested_traces_join_the_training_split_and_are_logged(
    tiny_settings: Settings
) -> None:
    setup_mlflow(tiny_settings)
    data = build_and_log_splits(tiny_settings)
    store = Store.from_settings(tiny_settings)
    served(store, "How much is 37 times 3?", "calculator", "37 * 3", "111", feedback=1)
    served(store, "What is 1000 g in kg?", "convert", "1000 g to kg", "1 kg")
    served(store, "What is 2 + 2?", "calculator", "2 + 2", "4", feedback=-1)
    store.close()

    with mlflow.start_run() as parent:
        mixed = harvest_into_training(tiny_settings, data, since=None,
                                      parent_run_id=parent.info.run_id)
    assert mixed.harvest.kept == 2
    assert sum(mixed.harvest.dropped.values()) == 1  # the thumbs-down trace
    assert mixed.train_path != data.train_path
    assert mixed.hashes["train"] != data.hashes["train"]
    assert mixed.hashes["test"] == data.hashes["test"], "the test set never changes"
    rows = load_split(mixed.train_path)
    harvested = [r for r in rows if r["source"] == "harvested"]
    assert {r["question"] for r in harvested} == {"How much is 37 times 3?",
                                                  "What is 1000 g in kg?"}
    assert len(rows) == len(load_split(data.train_path)) + 2

    client = MlflowClient()
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string="tags.`evolora.step` = 'harvest'")
    assert len(runs) == 1 and runs[0].data.metrics["harvested_rows"] == 2.0

    # The watermark moves on: a second harvest from it finds nothing new.
    again = harvest_into_training(tiny_settings, data, since=mixed.harvest.watermark)
    assert again.harvest.kept == 0
    assert again.train_path == data.train_path
