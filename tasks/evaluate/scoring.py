"""Evaluate a candidate (the base model or an adapter) by running the real ReAct agent.

Every problem of a split goes through `run_agent_batch` (tools really run); the answers
are scored with the metric modules in `tasks/evaluate/metrics/`, loaded through `evaluate`, overall,
per level, per skill and per skill x level. Each evaluation is an MLflow run tagged
`evolora.candidate`, with `<split>_accuracy` (final-answer exact match, 0 to 1).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import evaluate as hf_evaluate
import mlflow

from agent.loop import AgentRun, run_agent_batch
from agent.react_format import normalize_answer
from agent.tools import Tool, default_tools
from engines.engine import AdapterView, InferenceEngine
from evolora.logs import get_logger
from evolora.progress import current
from evolora.tracking import start_step_run
from evolora.vocabulary import CANDIDATE_TAG, ENGINE_TAG, STEP_TAG
from tasks.evaluate.metrics import metric_path

log = get_logger(__name__)


@dataclass
class EvalResult:
    """Scores of one candidate on one split, and each problem's outcome."""

    candidate: str
    split: str
    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None

    @property
    def accuracy(self) -> float:
        return self.metrics[f"{self.split}_accuracy"]

    def summary(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "split": self.split, "run_id": self.run_id,
                "metrics": self.metrics}


def load_metrics() -> dict[str, Any]:
    """Our three metric modules, loaded from the repository (no hub access)."""
    return {name: hf_evaluate.load(metric_path(name))
            for name in ("final_answer_match", "tool_call_validity", "format_validity")}


def score_runs(runs: list[AgentRun], examples: list[dict[str, Any]], split: str,
               metrics: dict[str, Any] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Metrics overall and per level, skill and skill x level, plus one row per problem."""
    metrics = metrics or load_metrics()
    rows = []
    for run, example in zip(runs, examples, strict=True):
        predicted = run.final_answer or ""
        rows.append({
            "id": example.get("id"),
            "skill": example["skill"],
            "level": example["level"],
            "question": example["question"],
            "expected": example["answer"],
            "predicted": predicted,
            "correct": bool(predicted) and normalize_answer(predicted) == normalize_answer(
                example["answer"]),
            "tools_used": [step.tool for step in run.steps],
            "steps": [{"thought": step.thought, "tool": step.tool, "argument": step.argument,
                       "observation": step.observation} for step in run.steps],
            "error": run.error,
            "transcript": run.transcript,
        })
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        for key in ("", row["level"], row["skill"], f"{row['skill']}_{row['level']}"):
            groups[key].append(index)
    scores: dict[str, float] = {}
    for key, indices in sorted(groups.items()):
        suffix = f"_{key}" if key else ""
        scores[f"{split}_accuracy{suffix}"] = metrics["final_answer_match"].compute(
            predictions=[rows[i]["predicted"] for i in indices],
            references=[rows[i]["expected"] for i in indices])["exact_match"]
    transcripts = [row["transcript"] for row in rows]
    expected_tools = [",".join(call["tool"] for call in ex.get("tool_calls", []))
                      for ex in examples]
    if rows:
        tool_scores = metrics["tool_call_validity"].compute(predictions=transcripts,
                                                            references=expected_tools)
        format_scores = metrics["format_validity"].compute(
            predictions=transcripts,
            references=[len(ex.get("tool_calls", [])) for ex in examples])
        scores.update({f"{split}_{k}": v for k, v in {**tool_scores, **format_scores}.items()})
    scores[f"{split}_problems"] = float(len(rows))
    return scores, rows


def evaluate_candidate(
    engine: InferenceEngine,
    examples: list[dict[str, Any]],
    *,
    candidate: str,
    adapter: str = "base",
    split: str = "test",
    tools: dict[str, Tool] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    max_steps: int = 4,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> EvalResult:
    """Run the agent on `examples` with `adapter` active and log the scores to MLflow."""
    tools = tools or default_tools()
    run_tags = {CANDIDATE_TAG: candidate, STEP_TAG: "evaluate", "evolora.split": split,
                ENGINE_TAG: engine.engine_name, **(tags or {})}
    with start_step_run(f"eval-{candidate}-{split}", parent_run_id, run_tags) as run:
        started = time.perf_counter()
        # Batches are formed over all the problems still running at each round; the
        # progress display counts problems as they finish.
        runs = run_agent_batch(AdapterView(engine, adapter), [ex["question"] for ex in examples],
                               tools, max_steps=max_steps, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, on_finished=current().advance)
        wall = time.perf_counter() - started
        scores, rows = score_runs(runs, examples, split)
        scores[f"{split}_eval_wall_s"] = wall
        mlflow.log_metrics(scores)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{split}_predictions.json"
            path.write_text(json.dumps(rows, indent=2))
            mlflow.log_artifact(str(path))
    log.info("evaluate.done", candidate=candidate, split=split,
             accuracy=round(scores[f"{split}_accuracy"], 3), seconds=round(wall, 1))
    return EvalResult(candidate, split, scores, rows, run.info.run_id)
