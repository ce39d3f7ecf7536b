"""Learning from its own attempts (STaR, NeurIPS 2022; ReST-EM, arXiv 2312.06585).

Each cycle the champion makes `k` sampled attempts at a fresh pool of generated problems,
worded from the training pool only (never a test wording). An attempt becomes a training
row only if its final answer is the problem's answer and every tool call re-runs to the
observation it recorded (`trace_to_row`, the check harvested serving traces pass). A
problem no attempt solved keeps its program-written trace: the night then trains on what
the champion got wrong as well as on its own way of getting things right. The yield per
skill x level says where the champion stands; it is logged to MLflow by the caller.
"""

from __future__ import annotations

import random
import time
from typing import Any

from agent.loop import run_agent_batch
from agent.react_format import normalize_answer
from agent.tools import Tool
from engines.engine import AdapterView, InferenceEngine
from evolora.progress import current
from evolora.settings import DataSettings
from tasks.data import GenerationReport, deduplicate
from tasks.data.generate import generate_examples
from tasks.harvest.traces import trace_to_row
from tasks.records import SelfAttemptReport

SELF_SOURCE = "self"
# The program-written trace of a pool problem the champion did not solve.
FALLBACK_SOURCE = "self_fallback"
# Pool problems are drawn with seeds far from any night's training seed (data.seed + night).
POOL_SEED_OFFSET = 100_000


def attempt_pool(data: DataSettings, *, seed: int, held_out: list[str],
                 tools: dict[str, Tool]) -> list[dict[str, Any]]:
    """Fresh training-wording problems, `data.self_problems_per_skill` per skill (hard at the
    training split's share), none of them a question of `held_out`."""
    hard = data.train_hard_fraction if data.train_hard_fraction is not None else (
        data.hard_fraction)
    rows: list[dict[str, Any]] = []
    for skill in data.skills:
        examples, _report = generate_examples(
            skill, data.self_problems_per_skill, split="train", seed=POOL_SEED_OFFSET + seed,
            hard_fraction=hard, reword_fraction=data.reword_fraction, tools=tools)
        rows.extend(examples)
    return deduplicate(rows, GenerationReport(split="self"), against=held_out)


def attempt_problems(engine: InferenceEngine, adapter: str, pool: list[dict[str, Any]], *,
                     attempts: int, temperature: float, max_new_tokens: int,
                     tools: dict[str, Tool], champion: str, seed: int = 0
                     ) -> tuple[list[dict[str, Any]], SelfAttemptReport]:
    """The rows the champion's attempts give, and the report.

    One row per problem: the first verified attempt's trace (source `self`), or the
    problem's program-written trace when none verified (source `self_fallback`).
    """
    started = time.perf_counter()
    questions = [row["question"] for row in pool for _ in range(attempts)]
    runs = run_agent_batch(AdapterView(engine, adapter), questions, tools,
                           max_new_tokens=max_new_tokens, temperature=temperature,
                           on_finished=current().advance)
    problems: dict[str, int] = {}
    solved: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    verified = 0
    for index, problem in enumerate(pool):
        cell = f"{problem['skill']}_{problem['level']}"
        problems[cell] = problems.get(cell, 0) + 1
        own = None
        for attempt, run in enumerate(runs[index * attempts:(index + 1) * attempts]):
            if not run.final_answer or normalize_answer(run.final_answer) != problem["answer"]:
                continue
            trace = {"id": f"{problem['id'].split('-')[-1]}-{attempt}",
                     "question": problem["question"], "final_answer": run.final_answer,
                     "steps": [vars(step) for step in run.steps]}
            row, _reason = trace_to_row(trace, tools, skill=problem["skill"],
                                        source=SELF_SOURCE)
            if row is not None:
                verified += 1
                # Labelled as the problem is, even when the champion found a shorter plan.
                own = own or {**row, "level": problem["level"]}
        if own is not None:
            solved[cell] = solved.get(cell, 0) + 1
            rows.append(own)
        else:
            rows.append({**problem, "source": FALLBACK_SOURCE})
    random.Random(seed).shuffle(rows)
    n_self = sum(row["source"] == SELF_SOURCE for row in rows)
    report = SelfAttemptReport(
        champion=champion, attempts_per_problem=attempts, problems=problems, solved=solved,
        verified_attempts=verified, attempts=len(runs), self_rows=n_self,
        fallback_rows=len(rows) - n_self, seconds=round(time.perf_counter() - started, 1))
    return rows, report


def yield_metrics(report: SelfAttemptReport) -> dict[str, float]:
    """The report as MLflow metrics: overall and per skill x level yield, attempt counts."""
    tried = sum(report.problems.values())
    metrics = {f"self_yield_{cell}": report.yield_of(cell) for cell in report.problems}
    metrics.update({
        "self_yield": sum(report.solved.values()) / tried if tried else 0.0,
        "self_problems": float(tried),
        "self_attempts": float(report.attempts),
        "self_verified_attempts": float(report.verified_attempts),
        "self_rows": float(report.self_rows),
        "self_fallback_rows": float(report.fallback_rows),
        "self_seconds": report.seconds,
    })
    return metrics
