"""Examples from skills: draw a problem, word it, render its ReAct trace, keep it if it verifies.

`generate_examples` draws problems from a skill's templates (`tasks.data.skills`), renders
each as a ReAct trace in the one format (`agent.react_format`), optionally paraphrases the
question with a teacher or rewords it by rule (`tasks.data.wording`), and keeps only
examples that `verify_example` accepts and that duplicate no earlier question.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from agent.react_format import (
    FINAL_THOUGHT,
    ToolCall,
    build_messages,
    normalize_answer,
    render_trace,
)
from agent.tools import Tool, default_tools
from tasks.data.checks import check_paraphrase, same_facts, verify_example
from tasks.data.dedup import DuplicateIndex
from tasks.data.recipes import Problem
from tasks.data.report import GenerationReport
from tasks.data.skills import SKILLS
from tasks.data.wording import reword
from tasks.records import Split

Paraphraser = Callable[[str], "str | None"]


def generate_examples(
    skill: str,
    n: int,
    *,
    split: Split,
    seed: int,
    hard_fraction: float,
    paraphrase: Paraphraser | None = None,
    paraphrase_fraction: float = 1.0,
    reword_fraction: float = 0.0,
    tools: dict[str, Tool] | None = None,
) -> tuple[list[dict[str, Any]], GenerationReport]:
    """`n` verified, deduplicated examples of one skill and the report of how they were made.

    The test split draws from the test wording pool, train and eval from the train pool.
    `round(n * hard_fraction)` examples are "hard" (two chained tool calls), the rest "easy".
    Train and eval questions the teacher did not rewrite are reworded by rule with
    probability `reword_fraction` (`tasks.data.wording`); test questions never are.
    """
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; known skills: {', '.join(SKILLS)}")
    if split not in ("train", "eval", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, eval or test")
    tools = tools if tools is not None else default_tools()
    pool = "test" if split == "test" else "train"
    # String seeds hash deterministically (sha512), unlike hash() of a tuple across runs.
    rng = random.Random(f"{seed}:{skill}:{split}")
    paraphrase_rng = random.Random(f"{seed}:{skill}:{split}:paraphrase")
    reword_rng = random.Random(f"{seed}:{skill}:{split}:reword")
    report = GenerationReport(split=split)
    examples: list[dict[str, Any]] = []
    seen = DuplicateIndex()
    n_hard = round(n * hard_fraction)
    for level, wanted in (("easy", n - n_hard), ("hard", n_hard)):
        templates = SKILLS[skill].templates[(pool, level)]
        kept = 0
        for _attempt in range(max(50, wanted * 30)):
            if kept >= wanted:
                break
            template = rng.choice(templates)
            problem = template.recipe(rng)
            question = template.text.format(**problem.slots)
            source = "synthetic"
            if paraphrase is not None and paraphrase_rng.random() < paraphrase_fraction:
                rewritten, reason = _try_paraphrase(paraphrase, question)
                if rewritten is None:
                    report.paraphrase_rejected += 1
                    reasons = report.paraphrase_rejected_reasons
                    reasons[reason] = reasons.get(reason, 0) + 1
                else:
                    report.paraphrase_accepted += 1
                    question, source = rewritten, "paraphrased"
            if split != "test" and source == "synthetic" and reword_rng.random() < reword_fraction:
                reworded = reword(question, reword_rng, accept=same_facts)
                if reworded != question:
                    question, source = reworded, "reworded"
                    report.reworded += 1
            duplicate = seen.check(question)
            if duplicate:
                report.drop(duplicate)
                continue
            example = example_row(skill, level, split, question, problem, source)
            problem_reason = verify_example(example, tools)
            if problem_reason is not None:
                report.drop(problem_reason.split(":")[0])
                continue
            seen.add(question)
            examples.append(example)
            kept += 1
        if kept < wanted:
            report.drop("not enough distinct examples", wanted - kept)
        report.counts.setdefault(skill, {})[level] = kept
    report.questions = [example["question"] for example in examples]
    report.update_diversity()
    return examples, report


def example_row(
    skill: str, level: str, split: str, question: str, problem: Problem, source: str
) -> dict[str, Any]:
    """One row in the split schema (`split_io.FEATURES`): the question, the ReAct trace that
    solves `problem`, and its planned tool calls."""
    steps = [(c.thought, ToolCall(c.tool, c.argument), c.observation) for c in problem.calls]
    assistant = render_trace(steps, FINAL_THOUGHT, problem.answer)
    digest = hashlib.sha256(f"{split}\n{skill}\n{question}".encode()).hexdigest()[:12]
    return {
        "id": f"{split}-{skill}-{level}-{digest}",
        "skill": skill,
        "level": level,
        "question": question,
        "answer": normalize_answer(problem.answer),
        "messages": [*build_messages(question), {"role": "assistant", "content": assistant}],
        "tool_calls": [
            {"tool": c.tool, "argument": c.argument, "observation": c.observation}
            for c in problem.calls
        ],
        "source": source,
    }


def _try_paraphrase(paraphrase: Paraphraser, question: str) -> tuple[str | None, str]:
    try:
        candidate = paraphrase(question)
    except Exception as exc:  # a teacher failing must not stop generation
        return None, f"teacher error ({type(exc).__name__})"
    reason = check_paraphrase(question, candidate)
    if reason is not None:
        return None, reason
    assert candidate is not None
    return " ".join(candidate.split()), ""
