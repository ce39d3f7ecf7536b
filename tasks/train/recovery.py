"""Recovery from running out of GPU memory in training: the next, lighter attempt.

After `torch.cuda.OutOfMemoryError` the trainer frees the GPU and asks `next_attempt` for a
lighter plan, one rung at a time, in this order:

1. half the micro-batch, twice the gradient accumulation (the effective batch is kept);
2. gradient checkpointing on;
3. half the max_length, down to `train.oom_min_max_length` and never below the longest
   prompt plus 32 tokens of reply (`shortest_useful_length`);
4. the next base in `train.fallback_bases` that the planner fits (a fresh start at step 0:
   an adapter of one base does not load on another; skipped when continuing an adapter);
5. the CPU (`train.oom_fallback_to_cpu`).

Rungs 1-3 and 5 keep the base, so training resumes from the last completed step: the
`ResumePoint` snapshot is written as a Trainer checkpoint and the next attempt resumes it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from evolora.settings import TrainSettings
from tasks.train.callbacks import Snapshot
from tasks.train.memory_plan import (
    GIB,
    DoesNotFit,
    ModelShape,
    TrainPlan,
    estimate_peak_bytes,
    plan_training,
)

ShapeOf = Callable[[str], ModelShape]
MIN_COMPLETION_TOKENS = 32  # of reply kept in the longest row when max_length is cut


class TrainingOutOfMemory(RuntimeError):
    """Every fallback ran out of memory too; the message lists what was tried."""


@dataclass(frozen=True)
class Attempt:
    """One try at the training: which base, with which plan, and what changed to get here."""

    model_path: str
    plan: TrainPlan
    change: str = "initial plan"
    resumes: bool = False  # continues the previous attempt's steps (same base)


def next_attempt(current: Attempt, train: TrainSettings, shape_of: ShapeOf,
                 bases_left: list[str], *, shortest_length: int | None = None,
                 can_change_base: bool = True) -> Attempt | None:
    """The next lighter attempt after `current` ran out of memory, or None when none is left.

    `bases_left` is consumed as the fallback bases are tried; max_length is never cut below
    `shortest_length` (default `train.oom_min_max_length`, see `shortest_useful_length`)."""
    shortest_length = shortest_length or train.oom_min_max_length
    plan = current.plan
    shape = shape_of(current.model_path)
    if plan.micro_batch > 1:
        micro = plan.micro_batch // 2
        accum = math.ceil(plan.effective_batch / micro)
        return _same_base(current, train, shape, f"micro_batch {plan.micro_batch} -> {micro}, "
                          f"grad_accum {plan.grad_accum} -> {accum}",
                          micro_batch=micro, grad_accum=accum)
    if not plan.gradient_checkpointing:
        return _same_base(current, train, shape, "gradient_checkpointing on",
                          gradient_checkpointing=True)
    shorter = max(plan.max_length // 2, shortest_length)
    if shorter < plan.max_length:
        return _same_base(current, train, shape, f"max_length {plan.max_length} -> {shorter}",
                          max_length=shorter)
    while can_change_base and bases_left:
        base = bases_left.pop(0)
        try:
            lighter = plan_training(train, shape_of(base), plan.device)
        except DoesNotFit:
            continue
        return Attempt(base, lighter, f"base model {current.model_path} -> {base}")
    if train.oom_fallback_to_cpu and plan.device != "cpu":
        try:
            on_cpu = plan_training(train, shape, "cpu", max_length=plan.max_length)
        except DoesNotFit:
            return None
        return Attempt(current.model_path, on_cpu, "device cuda -> cpu", resumes=True)
    return None


def shortest_useful_length(rows: object, tokenizer: object, floor: int) -> int:
    """The shortest max_length that still trains on every row: its longest prompt plus
    `MIN_COMPLETION_TOKENS` of reply (a row cut inside its prompt is dropped by TRL, and
    with ReAct prompts of ~250 tokens halving 320 would drop them all), at least `floor`."""
    longest = 0
    for row in rows:  # type: ignore[attr-defined]
        prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        longest = max(longest, len(ids))
    return max(floor, longest + MIN_COMPLETION_TOKENS)


def _same_base(current: Attempt, train: TrainSettings, shape: ModelShape, change: str,
               **updates: int | bool) -> Attempt:
    plan = dataclasses.replace(current.plan, **updates)  # type: ignore[arg-type]
    peak = estimate_peak_bytes(shape, train, plan.quantization, plan.micro_batch,
                               plan.gradient_checkpointing, plan.device,
                               max_length=plan.max_length, precision=plan.mixed_precision)
    plan = dataclasses.replace(plan, estimated_peak_gib=round(peak / GIB, 2))
    return Attempt(current.model_path, plan, change, resumes=True)


def write_resume_checkpoint(snapshot: Snapshot, adapter_config: object, folder: Path,
                            micro_batch: int) -> Path:
    """`snapshot` as a Trainer checkpoint folder (adapter, optimizer, scheduler, state) that
    `trainer.train(resume_from_checkpoint=folder)` continues at `micro_batch`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    adapter_config.save_pretrained(str(folder))  # type: ignore[attr-defined]
    save_file({k: v.contiguous() for k, v in snapshot.adapter.items()},
              str(folder / "adapter_model.safetensors"))
    torch.save(snapshot.optimizer, folder / "optimizer.pt")
    torch.save(snapshot.scheduler, folder / "scheduler.pt")
    state = json.loads(snapshot.trainer_state)
    state["train_batch_size"] = micro_batch  # the resumed run's, as if it had saved it
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    return folder


def free_accelerator_memory() -> None:
    """Return what the dropped model and trainer held to the GPU (and the allocator's cache
    to the driver, so another process on the card can have it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
