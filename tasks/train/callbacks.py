"""What the Trainer calls back into: step metrics for MLflow, the progress display, the
resume point an out-of-memory recovery starts from, and the trainer class itself (a lean
loss, a warm-up that never runs a step at learning rate 0, fault injection)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import torch
from transformers import TrainerCallback

from evolora.logs import get_logger
from evolora.progress import current
from tasks.train.loss import PLAIN_HEAD_MODELS, completion_loss

log = get_logger(__name__)

# The first steps of a process are slow (CUDA kernels load, the allocator grows, caches warm:
# 1.5-3 s each on an H200 against ~0.5 s later): tokens/s is timed after them.
TIMING_WARMUP_STEPS = 2


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peaks_mb() -> dict[str, float]:
    """Peak allocated and peak reserved GPU memory since the last reset, in MiB ({} off CUDA).

    Reserved is what the card holds for this process (before the CUDA context): the number a
    budget must be compared with."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_vram_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_vram_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}


class MlflowStepLogger(TrainerCallback):
    """Logs loss, the learning rate each step ran at, tokens/s after warm-up and peak memory
    at every logging step; `steady_tokens_per_s` is the run's rate after the warm-up steps."""

    def __init__(self, warmup_steps: int = TIMING_WARMUP_STEPS) -> None:
        self.warmup_steps = warmup_steps
        self.started = time.perf_counter()
        self.first_step = 0
        self.timed_from: tuple[int, float, int] | None = None  # (step, time, tokens)
        self.last: dict[str, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A resumed run starts at its checkpoint's step; its own warm-up starts again.
        self.started = time.perf_counter()
        self.first_step = state.global_step
        self.timed_from = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step - self.first_step == self.warmup_steps:
            self.timed_from = (state.global_step, time.perf_counter(),
                               state.num_input_tokens_seen or 0)

    def rate(self, state: Any) -> tuple[float, int, bool]:
        """(tokens/s, steps timed, whether the warm-up steps are in it): after warm-up when
        there were steps after it, else over every step of this run."""
        tokens = state.num_input_tokens_seen or 0
        now = time.perf_counter()
        if self.timed_from is not None and state.global_step > self.timed_from[0]:
            step, at, seen = self.timed_from
            return (tokens - seen) / max(now - at, 1e-6), state.global_step - step, False
        return tokens / max(now - self.started, 1e-6), state.global_step - self.first_step, True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not logs:
            return
        metrics = {k: float(v) for k, v in logs.items()
                   if isinstance(v, int | float) and k in {"loss", "learning_rate", "grad_norm"}}
        if state.num_input_tokens_seen:
            metrics["tokens_per_s"] = self.rate(state)[0]
        metrics["peak_rss_mb"] = peak_rss_mb()
        metrics.update(cuda_peaks_mb())
        self.last.update(metrics)
        if mlflow.active_run():
            mlflow.log_metrics(metrics, step=state.global_step)


class StepProgress(TrainerCallback):
    """Advances the command's progress display at each optimizer step; each logging
    step's numbers go to the log file (the Trainer's own bar and printed dicts are off)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        current().advance()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        log.debug("train.step", step=state.global_step, **(logs or {}))


@dataclass
class Snapshot:
    """A completed step's trainable state, in CPU memory."""

    step: int
    adapter: dict[str, torch.Tensor]  # PEFT's adapter state dict (file key names)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    trainer_state: str  # TrainerState as JSON


@dataclass
class ResumePoint(TrainerCallback):
    """Copies the adapter, optimizer and scheduler state to CPU memory after every optimizer
    step, so a run that runs out of GPU memory resumes from its last completed step (an
    error inside a step may leave the GPU copies half-updated). ~3x the LoRA's size a step:
    74 MB of weights for a 1.5B model at rank 16 on 7 projections."""

    latest: Snapshot | None = field(default=None)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        from peft import get_peft_model_state_dict

        self.latest = Snapshot(
            step=state.global_step,
            adapter={k: v.detach().to("cpu", copy=True)
                     for k, v in get_peft_model_state_dict(model).items()},
            optimizer=_to_cpu(optimizer.state_dict()),
            scheduler=dict(lr_scheduler.state_dict()),
            trainer_state=json.dumps(dataclasses.asdict(state), sort_keys=True),
        )


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def warmup_factor(step: int, *, warmup: int, total: int, kind: str, decay: int = 0) -> float:
    """The learning-rate multiplier of optimizer step `step` (0-based).

    Warm-up climbs (s + 1) / (warmup + 1), so the first step already learns (transformers'
    own warm-up starts at 0: step 1 changed nothing); then cosine, linear or constant.
    `kind="wsd"` (warmup-stable-decay, tasks/train/trunk.py) holds 1 until the last `decay`
    steps, which fall along a half cosine that never reaches 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "wsd":
        into_decay = step - (total - decay)
        if into_decay < 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (into_decay + 1) / (decay + 1)))
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 1.0


def lean_trainer_class() -> type:
    """SFTTrainer with our loss, schedule and fault injection (built lazily: importing trl
    is slow)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is the plain causal-LM loss on the collator's labels.

        TRL's own loss path also computes per-token entropy and top-1 accuracy over the
        49k-vocabulary head for its logs: ~9% of a CPU step (bench/train.py). The labels
        already mask the prompt (-100), so the loss is the same completion-only loss; for
        plain-head architectures the head runs on the completion positions only
        (`tasks.train.loss.completion_loss`). `oom_steps` (fault injection) raises
        torch.cuda.OutOfMemoryError once in each of those optimizer steps, after the forward
        pass, as a real one would.
        """

        oom_steps: set[int]  # set per run by train_adapter, shared by its attempts
        decay_steps: int = 0  # > 0: the warmup-stable-decay schedule (tasks/train/trunk.py)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            wanted = {"input_ids", "attention_mask", "labels", "position_ids"}
            lean = {k: v for k, v in inputs.items() if k in wanted}
            causal_lm = self.accelerator.unwrap_model(model)
            if hasattr(causal_lm, "get_base_model"):
                causal_lm = causal_lm.get_base_model()
            if (not return_outputs and "labels" in lean
                    and causal_lm.config.model_type in PLAIN_HEAD_MODELS):
                # Normalised over the accumulated batch only when the Trainer counts on it.
                scaled = num_items_in_batch if self.model_accepts_loss_kwargs else None
                result = completion_loss(causal_lm, lean, scaled)
            else:
                result = Trainer.compute_loss(self, model, lean, return_outputs=return_outputs,
                                              num_items_in_batch=num_items_in_batch)
            step = self.state.global_step + 1
            if step in getattr(self, "oom_steps", ()):
                self.oom_steps.discard(step)
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (injected by train.fault_oom_steps at step {step})")
            return result

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                kind = getattr(self.args.lr_scheduler_type, "value",
                               self.args.lr_scheduler_type)
                # "constant" is constant from the first step, as transformers has it.
                warmup = 0 if kind == "constant" else int(self.args.warmup_steps)
                decay = getattr(self, "decay_steps", 0)  # a night of the trunk's schedule
                factor = functools.partial(warmup_factor, warmup=warmup,
                                           total=num_training_steps,
                                           kind="wsd" if decay else kind, decay=decay)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, factor)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return LeanSFTTrainer
