"""Deciding a generation's breeding plan: AutoGen agents first, the genetic algorithm as fallback.

A breeder agent proposes a plan as JSON, a critic checks it against the population table and
either approves or asks for a fix; a GroupChatManager runs the talk with a fixed turn order
(user -> breeder -> critic -> breeder ...), so no LLM call is spent on picking speakers. The
last plan that passes `validate_plan` wins. A timeout, an exception, or no valid JSON at all
falls back to `ga_plan`, and the record says which policy decided and why:

    plan, record = decide_plan(members, settings.evolution, n_children=2,
                               rng=random.Random(0), llm_config=llm_config_for(settings.evolution,
                               server.base_url))
"""

from __future__ import annotations

import copy
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

from evolora.logs import get_logger
from evolora.prompts import load_prompts
from evolora.settings import EvolutionSettings
from evolora.vocabulary import UNEQUAL_RANK_TYPES
from tasks.evolve.plan import (
    PlanError,
    ga_plan,
    plan_json_schema,
    population_table,
    validate_plan,
)
from tasks.records import BreedingPlan, Member, PlanDecision

log = get_logger(__name__)

APPROVE = "APPROVE"
BREEDER_MAX_TOKENS = 512
CRITIC_MAX_TOKENS = 160

# The breeder's and the critic's prompts are data: tasks/evolve/prompts.yaml.
PROMPTS = load_prompts(Path(__file__).with_name("prompts.yaml"), ["breeder", "critic"])
BREEDER_PROMPT, CRITIC_PROMPT = PROMPTS["breeder"], PROMPTS["critic"]


def llm_config_for(settings: EvolutionSettings, base_url: str) -> dict[str, Any]:
    """An ag2 llm_config for the OpenAI-compatible server at `base_url` (ends in /v1)."""
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "none"
    entry: dict[str, Any] = {
        "model": settings.llm_model,
        "base_url": base_url,
        "api_key": api_key,
        "api_type": "openai",
        # The whole chat has one deadline; a retried call would only overrun it.
        "timeout": settings.llm_timeout_s,
        "max_retries": 0,
        # A local model costs nothing; a price also stops ag2 warning on unknown models.
        "price": [0.0, 0.0],
    }
    return {"config_list": [entry], "cache_seed": None, "temperature": 0.2}


class _QuietStream:
    """An ag2 IOStream that drops console output (ag2 would print every turn to stdout)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        pass

    def send(self, message: Any) -> None:
        pass

    def input(self, prompt: str = "", *, password: bool = False) -> str:
        return ""  # human_input_mode="NEVER": never asked


def _agent_config(llm_config: dict[str, Any], **entry_extras: Any) -> dict[str, Any]:
    config = copy.deepcopy(llm_config)
    config["config_list"] = [{**entry, **entry_extras} for entry in config["config_list"]]
    return config


def _is_approval(text: str) -> bool:
    # Only a reply that opens with the word (markdown allowed): "not approved" is no approval.
    return re.match(rf"\W*{APPROVE}D?\b", text.strip(), re.I) is not None


def propose_with_agents(
    members: list[Member],
    *,
    n_children: int,
    allowed_types: list[str],
    llm_config: dict[str, Any],
    timeout_s: float,
    max_rounds: int = 4,
    structured_output: bool = True,
) -> tuple[BreedingPlan | None, str]:
    """The agents' plan and why it was taken, or (None, why not) on timeout/error/no valid plan.

    `max_rounds` counts agent turns (breeder and critic). With `structured_output` the
    breeder's requests carry the plan's JSON schema as `response_format`, which llama.cpp,
    vLLM and OpenAI turn into constrained decoding; the reply is validated either way.
    """
    from autogen import AssistantAgent, GroupChat, GroupChatManager, UserProxyAgent
    from autogen.io import IOStream

    unequal = " / ".join(sorted(UNEQUAL_RANK_TYPES)) or "none"
    types = ", ".join(allowed_types)
    breeder_extras: dict[str, Any] = {"max_tokens": BREEDER_MAX_TOKENS}
    if structured_output:
        # ag2 wraps a schema dict as {"type": "json_schema", "json_schema": {...}}.
        breeder_extras["response_format"] = plan_json_schema(
            members, n_children=n_children, allowed_types=allowed_types
        )
    breeder = AssistantAgent(
        "breeder",
        system_message=BREEDER_PROMPT.format(n_children=n_children, types=types, unequal=unequal),
        llm_config=_agent_config(llm_config, **breeder_extras),
        code_execution_config=False,
    )
    critic = AssistantAgent(
        "critic",
        system_message=CRITIC_PROMPT.format(n_children=n_children, types=types, unequal=unequal),
        llm_config=_agent_config(llm_config, max_tokens=CRITIC_MAX_TOKENS),
        code_execution_config=False,
    )
    user = UserProxyAgent(
        "evolution",
        human_input_mode="NEVER",
        code_execution_config=False,
        default_auto_reply="",
    )
    cancelled = threading.Event()

    def next_speaker(last: Any, chat: GroupChat) -> Any:
        # None ends the chat: on approval, or when the caller has given up waiting.
        if cancelled.is_set():
            return None
        if last is breeder:
            return critic
        if last is critic and _is_approval(str(chat.messages[-1].get("content") or "")):
            return None
        return breeder

    chat = GroupChat(
        agents=[user, breeder, critic],
        messages=[],
        max_round=max_rounds + 1,  # the opening message counts as a round
        speaker_selection_method=next_speaker,
    )
    manager = GroupChatManager(chat, llm_config=False, code_execution_config=False)
    task = (
        f"Population (best first):\n\n{population_table(members)}\n\n"
        f"Plan exactly {n_children} children for the next generation."
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            # ag2 prints the whole chat to stdout; the transcript is logged at debug instead.
            with IOStream.set_default(_QuietStream()):
                user.initiate_chat(manager, message=task, silent=True)
        except BaseException as exc:  # reported to the caller, never lost in the thread
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True, name="breeding-agents")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        cancelled.set()  # the chat stops at its next turn; the HTTP call has its own timeout
        return None, f"timeout: no plan within {timeout_s:g} s ({len(chat.messages)} messages)"
    for message in chat.messages:
        log.debug("evolve.agent_message", name=message.get("name"), content=message.get("content"))
    if failure:
        exc = failure[0]
        return None, f"exception: {type(exc).__name__}: {str(exc)[:300]}"
    return _pick_plan(chat.messages, members, n_children=n_children, allowed_types=allowed_types)


def _pick_plan(
    messages: list[dict[str, Any]],
    members: list[Member],
    *,
    n_children: int,
    allowed_types: list[str],
) -> tuple[BreedingPlan | None, str]:
    # Newest problems of each speaker: the critic's free text must not hide why the
    # breeder's plans failed.
    problems: dict[str, list[str]] = {}
    turns = [m for m in messages if m.get("name") in ("breeder", "critic")]
    approved = bool(turns) and turns[-1].get("name") == "critic"
    approved = approved and _is_approval(str(turns[-1].get("content") or ""))
    # Newest first: a fix the critic asked for supersedes the plan it criticised.
    for message in reversed(turns):
        content = str(message.get("content") or "")
        if message["name"] == "critic" and _is_approval(content):
            continue
        try:
            plan = validate_plan(
                content, members, n_children=n_children, allowed_types=allowed_types
            )
        except PlanError as exc:
            problems.setdefault(message["name"], exc.problems)
            continue
        verdict = "approved by the critic" if approved else "not approved by the critic"
        return plan, f"valid plan from the {message['name']}, {verdict} ({len(turns)} turns)"
    if not turns:
        return None, "no agent replied"
    said = " | ".join(f"{name}: " + "; ".join(found[:3]) for name, found in problems.items())
    return None, f"no valid plan in {len(turns)} turns; last problems, {said}"


def decide_plan(
    members: list[Member],
    settings: EvolutionSettings,
    *,
    n_children: int,
    rng: random.Random,
    llm_config: dict[str, Any] | None,
    max_rounds: int = 4,
) -> tuple[BreedingPlan, PlanDecision]:
    """This generation's plan, and who decided it (the agents or the GA), why and how fast."""
    started = time.perf_counter()
    allowed = list(settings.combination_types)
    plan: BreedingPlan | None = None
    if llm_config is None:
        reason = "no llm_config: agents not configured"
    else:
        def ask(structured_output: bool) -> tuple[BreedingPlan | None, str]:
            return propose_with_agents(
                members,
                n_children=n_children,
                allowed_types=allowed,
                llm_config=llm_config,
                timeout_s=settings.llm_timeout_s,
                max_rounds=max_rounds,
                structured_output=structured_output,
            )

        try:
            plan, reason = ask(structured_output=True)
            if plan is None and reason.startswith("exception: BadRequestError"):
                # A server whose grammar engine cannot take the plan's schema answers 400:
                # ask once more without it (the reply is validated either way).
                plan, retry = ask(structured_output=False)
                reason = f"{retry} (asked without the schema after: {reason[:200]})"
        except Exception as exc:  # e.g. a malformed llm_config: the GA still breeds
            plan, reason = None, f"exception: {type(exc).__name__}: {str(exc)[:300]}"
    policy = "agents"
    if plan is None:
        policy = "ga"
        if llm_config is not None:
            reason = f"agents failed ({reason}); GA fallback"
            log.warning("evolve.agents_failed", reason=reason)
        plan = ga_plan(
            members,
            n_children=n_children,
            allowed_types=allowed,
            rng=rng,
            mutation_strength=settings.mutation_std,
        )
    decision = PlanDecision(policy=policy, reason=reason,
                            seconds=round(time.perf_counter() - started, 3))
    log.info("evolve.plan_decided", policy=policy, reason=reason, seconds=decision.seconds,
             plan=plan.model_dump(mode="json"))
    return plan, decision
