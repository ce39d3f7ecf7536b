"""Closing the loop: the service's agent traces become next night's training rows.

`harvest_traces` reads the traces recorded (or rated) since the last cycle and keeps those
worth learning from: a final answer and no error (or a thumbs-up), never a thumbs-down.
Each kept trace is rendered in exactly the synthetic rows' format (`tasks.data`: system +
user + assistant `render_trace(...)`), every recorded tool call is re-run with the real
tools, and the row must pass `tasks.data.verify_example` like any generated example: an
observation the tools no longer give, an ungrounded answer or a broken trace is dropped.
Then duplicates (and held-out questions) go, and the rest is capped at `max_rows`.

Selection is fair across users, so one key cannot poison the training mix (it rates its own
traces, and the harvested share is taken from the front of the list): only the traces of
users the operator lets train count (`users`: all, none, or an allow-list of user ids;
setting `data.harvest_users`), each user gives at most `max_per_user` rows
(`data.harvest_max_per_user`), and the rows are interleaved by user: every user's best row
(thumbs-up first, then newest) comes before anyone's second.

`mix_with_synthetic` adds harvested rows to a synthetic train split, capped as a share of
the mix, so a burst of similar user questions cannot swamp the curriculum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from agent.react_format import (
    FINAL_THOUGHT,
    ToolCall,
    build_messages,
    normalize_answer,
    render_trace,
)
from agent.tools import Tool, default_tools, run_tool
from evolora.settings import DataSettings
from tasks.data import GenerationReport, deduplicate, validate_row, verify_example

if TYPE_CHECKING:
    from storage.store import Store

HARVEST_SOURCE = "harvested"
# Rows must carry a skill tasks.data knows (validate_row and load_split refuse others, and
# population specialists filter on it): the skill of the tool that produced the answer.
TOOL_SKILLS = {"calculator": "arithmetic", "convert": "units", "date": "dates",
               "currency": "currency"}
_STEP_KEYS = ("thought", "tool", "argument", "observation")
# The operator's defaults (evolora/settings.py), for callers that pass none.
DEFAULT_MAX_PER_USER: int = DataSettings.model_fields["harvest_max_per_user"].default
HarvestUsers = Literal["all", "none"] | Sequence[str]


def harvest_traces(
    store: Store,
    *,
    since: float | None,
    max_rows: int,
    tools: Mapping[str, Tool] | None = None,
    held_out: Iterable[str] = (),
    max_per_user: int = DEFAULT_MAX_PER_USER,
    users: HarvestUsers = "all",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Verified training rows from the store's traces since `since`, and the report.

    Kept: a final answer with no error, or any trace rated +1 that has a final answer, of a
    user `users` lets train ("all", "none", or a list of user ids).
    Dropped, counted by reason in `report["dropped"]`: users not let train, negative
    feedback, failed, no tool calls (nothing to verify: the answer may rest on memory the
    row would not contain), malformed steps, tool errors, observation mismatches and any
    other `verify_example` failure, duplicates, questions in `held_out` (pass the frozen
    test questions), rows beyond a user's `max_per_user`, and rows over `max_rows`.
    Order (what a cap keeps first): interleaved by user, each user's rows positively rated
    first, then newest; within one round of the interleave, rated first, then newest.
    `report["watermark"]` is the newest time seen: the next harvest's `since`.
    """
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0 (got {max_rows})")
    if max_per_user < 1:
        raise ValueError(f"max_per_user must be >= 1 (got {max_per_user})")
    allowed = _allowed_users(users)
    tools = dict(tools) if tools is not None else default_tools()
    traces = store.traces_since(since)
    dropped: dict[str, int] = {}

    def drop(reason: str, count: int = 1) -> None:
        dropped[reason] = dropped.get(reason, 0) + count

    candidates: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
    for trace in traces:
        if allowed is not None and str(trace.get("user_id")) not in allowed:
            drop("user not in data.harvest_users")
            continue
        reason = _exclusion(trace)
        if reason is None:
            row, reason = trace_to_row(trace, tools)
            if row is not None:
                candidates.append((trace, row))
                continue
        drop(reason or "unknown")

    candidates = _interleaved_by_user(candidates)
    dedupe_report = GenerationReport(split="harvest")
    rows = deduplicate([row for _, row in candidates], dedupe_report, against=held_out)
    for reason, count in dedupe_report.dropped.items():
        drop(reason, count)
    user_of = {row["id"]: str(trace.get("user_id")) for trace, row in candidates}
    per_user: dict[str, int] = {}
    capped = []
    for row in rows:
        user = user_of[row["id"]]
        per_user[user] = per_user.get(user, 0) + 1
        if per_user[user] > max_per_user:
            drop("over harvest_max_per_user")
            continue
        capped.append(row)
    rows = capped
    if len(rows) > max_rows:
        drop("over max_rows", len(rows) - max_rows)
        rows = rows[:max_rows]

    trace_of = {row["id"]: trace for trace, row in candidates}
    kept_ids = [str(trace_of[row["id"]]["id"]) for row in rows]
    levels: dict[str, int] = {}
    skills: dict[str, int] = {}
    for row in rows:
        levels[row["level"]] = levels.get(row["level"], 0) + 1
        skills[row["skill"]] = skills.get(row["skill"], 0) + 1
    times = [float(t.get(key) or 0.0) for t in traces for key in ("created_at", "feedback_at")]
    report = {
        "since": since,
        "watermark": max(times) if times else since,
        "traces": len(traces),
        "kept": len(rows),
        "kept_positive": sum(trace_of[row["id"]].get("feedback") == 1 for row in rows),
        "kept_by_level": levels,
        "kept_by_skill": skills,
        "kept_users": len({user_of[row["id"]] for row in rows}),
        "dropped": dropped,
        "trace_ids": kept_ids,
    }
    return rows, report


def trace_to_row(trace: Mapping[str, Any], tools: Mapping[str, Tool], *,
                 skill: str | None = None, source: str = HARVEST_SOURCE
                 ) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a trace that renders to a verified training row, else (None, reason).

    `skill` (default: the skill of the last tool used) labels the row, for a trace of a
    problem whose skill is known (the champion's own attempts).
    """
    question = trace.get("question")
    final_answer = trace.get("final_answer")
    steps = trace.get("steps")
    if not isinstance(question, str) or not question.strip():
        return None, "malformed trace"
    if not isinstance(final_answer, str) or not final_answer.strip():
        return None, "failed"
    if not isinstance(steps, list) or not all(_is_step(step) for step in steps):
        return None, "malformed steps"
    if not steps:
        return None, "no tool calls (unverifiable)"
    tools = dict(tools)  # run_tool and verify_example take a plain dict
    calls = []
    for step in steps:
        tool = step["tool"].strip().lower()
        argument = " ".join(step["argument"].split())
        observation = " ".join(step["observation"].split())
        if observation.startswith("Error:"):
            return None, "tool error"
        # The recorded observation must still be what the real tool says today.
        if run_tool(tools, tool, argument) != observation:
            return None, "observation mismatch"
        thought = " ".join(step["thought"].split()) or f"I should use the {tool} tool."
        calls.append((thought, ToolCall(tool, argument), observation))
    question = " ".join(question.split())
    level = "easy" if len(calls) == 1 else "hard"
    skill = skill or TOOL_SKILLS.get(calls[-1][1].tool)
    if skill is None:
        return None, "unknown tool"
    row = {
        "id": f"{source}-{skill}-{level}-{trace['id']}",
        "skill": skill,
        "level": level,
        "question": question,
        "answer": normalize_answer(final_answer),
        "messages": [
            *build_messages(question),
            {"role": "assistant",
             "content": render_trace(calls, FINAL_THOUGHT, final_answer.strip())},
        ],
        "tool_calls": [{"tool": call.tool, "argument": call.argument, "observation": obs}
                       for _, call, obs in calls],
        "source": source,
    }
    problems = validate_row(row)
    if problems:
        return None, "invalid row"
    problem = verify_example(row, tools)
    if problem is not None:
        return None, problem.split(":")[0]
    return row, None


def mix_with_synthetic(
    synthetic_rows: list[dict[str, Any]],
    harvested_rows: list[dict[str, Any]],
    *,
    max_share: float,
) -> list[dict[str, Any]]:
    """The synthetic rows, then as many harvested rows as keep them at most `max_share` of
    the mix (harvested rows that duplicate a synthetic question are left out first).

    With S synthetic rows the mix takes floor(max_share * S / (1 - max_share)) harvested
    rows, in the order given (harvest_traces interleaves users, thumbs-up and newest
    first); max_share 0
    takes none, 1 takes all.
    """
    if not 0.0 <= max_share <= 1.0:
        raise ValueError(f"max_share must be between 0 and 1 (got {max_share})")
    fresh = deduplicate(list(harvested_rows), GenerationReport(split="harvest"),
                        against=[row["question"] for row in synthetic_rows])
    if max_share >= 1.0:
        allowed = len(fresh)
    else:
        # The epsilon keeps exact shares exact (0.2 * 8 / 0.8 is 1.9999999999999996).
        allowed = math.floor(max_share * len(synthetic_rows) / (1.0 - max_share) + 1e-9)
    return [*synthetic_rows, *fresh[:allowed]]


def _allowed_users(users: HarvestUsers) -> set[str] | None:
    """The user ids whose traces may train; None for everyone."""
    if users == "all":
        return None
    if users == "none":
        return set()
    if isinstance(users, str):
        raise ValueError(f"users must be 'all', 'none' or a list of user ids (got {users!r})")
    return {str(user) for user in users}


def _interleaved_by_user(candidates: list[tuple[Mapping[str, Any], dict[str, Any]]]
                         ) -> list[tuple[Mapping[str, Any], dict[str, Any]]]:
    """Each user's candidates ranked thumbs-up first, then newest; then every user's first,
    every user's second, ... (each round again thumbs-up first, then newest)."""
    def preference(pair: tuple[Mapping[str, Any], dict[str, Any]]) -> tuple[bool, float]:
        trace = pair[0]
        return trace.get("feedback") != 1, -float(trace.get("created_at") or 0.0)

    by_user: dict[str, list[tuple[Mapping[str, Any], dict[str, Any]]]] = {}
    for pair in candidates:
        by_user.setdefault(str(pair[0].get("user_id")), []).append(pair)
    ranked = [(rank, preference(pair), pair) for pairs in by_user.values()
              for rank, pair in enumerate(sorted(pairs, key=preference))]
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [pair for _, _, pair in ranked]


def _exclusion(trace: Mapping[str, Any]) -> str | None:
    """Why a trace is not worth learning from before looking at its steps, or None."""
    feedback = trace.get("feedback")
    if feedback == -1:
        return "negative feedback"
    answered = isinstance(trace.get("final_answer"), str) and trace["final_answer"].strip()
    if not answered or (trace.get("error") and feedback != 1):
        return "failed"
    return None


def _is_step(step: Any) -> bool:
    return isinstance(step, Mapping) and all(isinstance(step.get(k), str) for k in _STEP_KEYS)
