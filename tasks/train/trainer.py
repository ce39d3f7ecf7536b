"""Train one LoRA/QLoRA adapter with TRL's SFTTrainer, tracked as an MLflow run.

`train_adapter` reads top to bottom: plan memory, load the base (4-bit on CUDA by default),
wrap it in LoRA, train on prompt/completion pairs (loss on the assistant's ReAct trace
only), then write the adapter folder atomically with its manifest and log it to MLflow.
Out of GPU memory it goes on with a lighter plan (tasks/train/recovery.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from transformers import AutoConfig, PrinterCallback, ProgressCallback

from engines.transformers_runtime import load_tokenizer, pick_device
from evolora.logs import get_logger
from evolora.models import base_model_checksum, sha256_file
from evolora.settings import Settings, TrainSettings
from evolora.tracking import log_resolved_config, start_step_run
from evolora.vocabulary import STEP_TAG
from tasks.train.callbacks import (
    MlflowStepLogger,
    ResumePoint,
    StepProgress,
    cuda_peaks_mb,
    lean_trainer_class,
    peak_rss_mb,
)
from tasks.train.memory_plan import ModelShape, TrainPlan, plan_training
from tasks.train.model_size import model_param_counts
from tasks.train.recovery import (
    Attempt,
    TrainingOutOfMemory,
    free_accelerator_memory,
    next_attempt,
    shortest_useful_length,
    write_resume_checkpoint,
)
from tasks.train.trunk import TrunkCallback, WsdSchedule

log = get_logger(__name__)

ADAPTER_MANIFEST = "evolora-adapter.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class TrainResult:
    """Where the adapter landed and what the run measured."""

    name: str
    adapter_dir: Path
    run_id: str | None
    plan: TrainPlan
    metrics: dict[str, float] = field(default_factory=dict)
    base_model: str = ""  # the base the adapter was trained on (a fallback base, if it was)
    oom_fallbacks: list[dict[str, Any]] = field(default_factory=list)


def to_prompt_completion(rows: Any) -> Any:
    """Split each chat example into prompt (system + user) and completion (the trace).

    TRL computes the loss on the completion only for this layout, so the model learns the
    ReAct trace and not to echo the system prompt.
    """
    def split(row: dict[str, Any]) -> dict[str, Any]:
        messages = row["messages"]
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return rows.map(split, remove_columns=rows.column_names)


def load_for_training(model_path: str, plan: TrainPlan, train: TrainSettings,
                      init_adapter: Path | None = None) -> Any:
    """The base model, quantised per the plan, wrapped in a trainable LoRA.

    With `init_adapter`, training continues from that adapter's weights (and its rank and
    targets) instead of a fresh LoRA: the "continued training" mutation.
    """
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    kwargs: dict[str, Any] = {"dtype": dtypes[plan.mixed_precision]}
    if plan.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
    elif plan.quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if plan.device == "cuda" and plan.quantization != "none":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if plan.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=plan.gradient_checkpointing)
    if init_adapter is not None:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    lora = LoraConfig(r=train.rank, lora_alpha=train.alpha, lora_dropout=train.dropout,
                      target_modules=list(train.target_modules), task_type="CAUSAL_LM")
    # PEFT keeps the LoRA weights in fp32 (autocast_adapter_dtype) over a 16-bit base.
    return get_peft_model(model, lora)


def train_adapter(
    settings: Settings,
    model_path: str,
    train_rows: Any,
    adapters_dir: Path,
    name: str,
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    tags: dict[str, str] | None = None,
    dataset_hashes: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    init_adapter: Path | None = None,
    manifest_extra: dict[str, Any] | None = None,
    wsd: WsdSchedule | None = None,
) -> TrainResult:
    """Train a LoRA on `train_rows` (chat examples) and save it as `adapters_dir/name`.

    `init_adapter` continues training an existing adapter; `manifest_extra` (genealogy,
    data mix) is merged into the manifest written beside the adapter. Out of GPU memory,
    the run frees the card and goes on with a lighter plan (tasks/train/recovery.py), each
    fallback logged and tagged on the MLflow run; `TrainResult.base_model` says which base
    the adapter is for (a fallback base, if it came to that). With `wsd`, the run is one
    night of the trunk's warmup-stable-decay schedule (tasks/train/trunk.py): it continues
    `wsd.resume` (pass its folder as `init_adapter`) at the stable rate, keeps the trunk
    before its decay, and the adapter saved is the decayed one.
    """
    train = settings.train
    seed = train.seed if seed is None else seed
    device = pick_device()
    plan = plan_training(train, model_shape(model_path), device)
    log.info("train.plan", name=name, **plan.to_dict())
    attempt = Attempt(model_path, plan)

    dataset = to_prompt_completion(train_rows)
    adapters_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=adapters_dir))
    steps = max_steps or train.max_steps
    # A trunk continues one run at its own rate; only a decayed adapter's continuation is
    # scaled down (peak_learning_rate).
    continuing = init_adapter is not None and not (wsd and wsd.resume)
    run_tags = {STEP_TAG: "train", "evolora.adapter": name, **(tags or {})}
    oom_steps = set(train.fault_oom_steps)  # each fires once, whichever attempt reaches it
    bases_left = list(train.fallback_bases)
    fallbacks: list[dict[str, Any]] = []
    try:
        with start_step_run(f"train-{name}", parent_run_id, run_tags) as run:
            log_resolved_config(settings, {
                "name": name, "seed": seed, "max_steps": steps, "plan": plan.to_dict(),
                "continues": str(init_adapter) if init_adapter else None,
                "peak_learning_rate": peak_learning_rate(train, continuing=continuing),
                "schedule": _schedule_params(wsd, steps)})
            if dataset_hashes and dataset_hashes.get("train"):
                from tasks.data import log_dataset_to_mlflow

                # This member's own rows (a specialist's subset), hashed as trained on.
                log_dataset_to_mlflow(train_rows, f"train-{name}",
                                      _rows_hash(train_rows), "training")
            started = time.perf_counter()
            resume_from: Path | None = None
            while True:
                trainer, step_logger, resume_point = _build_trainer(
                    attempt, train, dataset, staging, steps, seed, oom_steps,
                    init_adapter if attempt.model_path == model_path else None,
                    continuing=continuing,
                    # A fallback base's adapter is no trunk the next night could continue.
                    wsd=wsd if attempt.model_path == model_path else None)
                out_of_memory = ""
                try:
                    # The Trainer prints each log dict on stdout; stdout belongs to the CLI's
                    # output (`--json`), so those lines go to stderr with the progress bar.
                    with contextlib.redirect_stdout(sys.stderr):
                        output = trainer.train(resume_from_checkpoint=resume_from)
                except torch.cuda.OutOfMemoryError as exc:
                    out_of_memory = str(exc).splitlines()[0]  # the frames go with `exc`
                if not out_of_memory:
                    break
                snapshot = resume_point.latest if resume_point else None
                adapter_config = trainer.model.peft_config["default"]
                failed_at = trainer.state.global_step + 1
                trainer = resume_point = None  # type: ignore[assignment]
                free_accelerator_memory()
                shortest = shortest_useful_length(train_rows, load_tokenizer(attempt.model_path),
                                                  train.oom_min_max_length)
                lighter = next_attempt(attempt, train, model_shape, bases_left,
                                       shortest_length=shortest,
                                       can_change_base=init_adapter is None)
                if lighter is None:
                    raise TrainingOutOfMemory(_gave_up(out_of_memory, attempt, fallbacks))
                resume_from = None
                if lighter.resumes and snapshot is not None:
                    resume_from = write_resume_checkpoint(
                        snapshot, adapter_config, staging / "trainer" / f"resume-{len(fallbacks)}",
                        lighter.plan.micro_batch)
                fallbacks.append(_record_fallback(name, len(fallbacks) + 1, failed_at,
                                                  out_of_memory, lighter, resume_from))
                attempt = lighter
            wall = time.perf_counter() - started
            tokens_per_s, timed_steps, includes_warmup = step_logger.rate(trainer.state)
            metrics = {
                "train_loss": float(output.training_loss),
                "train_wall_s": wall,
                "train_tokens_per_s": tokens_per_s,
                "train_timed_steps": float(timed_steps),
                "train_timing_includes_warmup": float(includes_warmup),
                "oom_fallbacks": float(len(fallbacks)),
                "peak_rss_mb": peak_rss_mb(),
                **cuda_peaks_mb(),
            }
            mlflow.log_metrics(metrics)
            final = attempt.plan.to_dict()
            mlflow.log_params({f"final_plan.{k}": v for k, v in final.items()}
                              | {"final_plan.base_model": attempt.model_path})
            adapter_dir = _save_adapter(
                trainer.model, staging, adapters_dir / name,
                manifest={
                    "name": name,
                    "base_model": attempt.model_path,
                    "base_model_sha256": base_model_checksum(attempt.model_path),
                    "seed": seed,
                    "train": train.model_dump(mode="json"),
                    "plan": final,
                    "oom_fallbacks": fallbacks,
                    "dataset_hashes": dataset_hashes or {},
                    "metrics": metrics,
                    "tags": tags or {},
                    "mlflow_run_id": run.info.run_id,
                    "init_adapter": str(init_adapter) if init_adapter else None,
                    "schedule": _schedule_params(wsd, steps),
                    **(manifest_extra or {}),
                },
            )
            mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        trainer = None  # type: ignore[assignment]
        free_accelerator_memory()  # the card is the evaluation's (or the service's) now
    log.info("train.done", name=name, path=str(adapter_dir), **metrics)
    return TrainResult(name, adapter_dir, run.info.run_id, attempt.plan, metrics,
                       base_model=attempt.model_path, oom_fallbacks=fallbacks)


def peak_learning_rate(train: TrainSettings, *, continuing: bool) -> float:
    """The schedule's peak: `learning_rate`, scaled by `continue_lr_scale` when the run
    continues an existing adapter rather than a fresh one."""
    return train.learning_rate * (train.continue_lr_scale if continuing else 1.0)


def _schedule_params(wsd: WsdSchedule | None, steps: int) -> dict[str, Any]:
    """The schedule as recorded on the run and in the manifest."""
    if wsd is None:
        return {"kind": "single"}
    return {"kind": "wsd", "decay_steps": wsd.decay_steps,
            "trunk_kept_after_step": wsd.stable_end(steps), "trunk_to": str(wsd.save_to),
            "continues_trunk": wsd.resume.member_id if wsd.resume else None,
            "trunk_steps_before": wsd.resume.steps if wsd.resume else 0}


def _build_trainer(attempt: Attempt, train: TrainSettings, dataset: Any, staging: Path,
                   steps: int, seed: int, oom_steps: set[int], init_adapter: Path | None,
                   *, continuing: bool, wsd: WsdSchedule | None
                   ) -> tuple[Any, MlflowStepLogger, ResumePoint | None]:
    """The attempt's base in LoRA, in a Trainer set up per its plan, with its callbacks."""
    from trl import SFTConfig

    plan = attempt.plan
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the peaks reported are this attempt's
    tokenizer = load_tokenizer(attempt.model_path)
    tokenizer.padding_side = "right"  # training pads on the right
    model = load_for_training(attempt.model_path, plan, train, init_adapter)
    sft_config = SFTConfig(
        output_dir=str(staging / "trainer"),
        max_length=plan.max_length or train.max_length,
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.grad_accum,
        gradient_checkpointing=plan.gradient_checkpointing,
        learning_rate=peak_learning_rate(train, continuing=continuing),
        lr_scheduler_type=train.lr_scheduler,
        # The warm-up never starts at 0 (callbacks.warmup_factor): step 1 already learns.
        # A trunk's continuation is past its warm-up: its optimizer state comes with it.
        warmup_steps=0 if wsd and wsd.resume else max(1, steps // 20),
        max_steps=steps,
        logging_steps=train.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=plan.mixed_precision == "bf16",
        fp16=plan.mixed_precision == "fp16",
        use_cpu=plan.device == "cpu",
        # Real tokens only, so tokens/s is honest about padding.
        include_num_input_tokens_seen="non_padding",
        # Batches of similar lengths: traces vary 2x in length, and padding is compute
        # thrown away on a CPU (about a third of each batch without this).
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
    )
    step_logger = MlflowStepLogger()
    # A snapshot per step costs ~3x the LoRA's size in copies: only where OOM can happen.
    resume_point = ResumePoint() if plan.device == "cuda" or oom_steps else None
    callbacks = [step_logger, StepProgress(), *([resume_point] if resume_point else [])]
    if wsd is not None:
        callbacks.append(TrunkCallback(wsd, wsd.stable_end(steps), sft_config.learning_rate))
    trainer = lean_trainer_class()(model=model, args=sft_config, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=callbacks)
    trainer.oom_steps = oom_steps
    trainer.decay_steps = wsd.decay_steps if wsd else 0
    for console_callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(console_callback)  # the progress display shows the steps
    return trainer, step_logger, resume_point


def _record_fallback(name: str, number: int, step: int, error: str, attempt: Attempt,
                     resume_from: Path | None) -> dict[str, Any]:
    """Log the fallback and tag it on the active MLflow run; returns it for the manifest."""
    record = {"step": step, "change": attempt.change, "error": error,
              "base_model": attempt.model_path, "plan": attempt.plan.to_dict(),
              "resumed_from_step": step - 1 if resume_from else 0}
    log.warning("train.oom_fallback", name=name, fallback=number, step=step,
                change=attempt.change, resumed_from_step=record["resumed_from_step"],
                **{f"plan_{k}": v for k, v in attempt.plan.to_dict().items()})
    mlflow.set_tags({f"evolora.oom_fallback.{number}":
                     f"out of memory at step {step}: {attempt.change}; resumed from step "
                     f"{record['resumed_from_step']}",
                     "evolora.oom_fallbacks": str(number)})
    return record


def _gave_up(error: str, attempt: Attempt, fallbacks: list[dict[str, Any]]) -> str:
    tried = "; ".join(f["change"] for f in fallbacks) or "no fallback was left"
    return (f"training ran out of GPU memory with the lightest plan left ({error}); tried: "
            f"{tried}. Lower train.max_length or train.rank, add a lighter base to "
            "train.fallback_bases, or allow train.oom_fallback_to_cpu")


def _rows_hash(rows: Any) -> str:
    from tasks.data import dataset_hash

    return dataset_hash(list(rows))


def _save_adapter(model: Any, staging: Path, target: Path, manifest: dict[str, Any]) -> Path:
    """Write adapter files + manifest into `staging`, then move them to `target` at once."""
    shutil.rmtree(staging / "trainer", ignore_errors=True)
    model.save_pretrained(str(staging))
    write_adapter_manifest(staging, manifest)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def write_adapter_manifest(adapter_dir: Path, manifest: dict[str, Any]) -> None:
    """Record the adapter's provenance and each file's sha256 beside it."""
    files = {f: sha256_file(adapter_dir / f) for f in ADAPTER_FILES
             if (adapter_dir / f).is_file()}
    data = {**manifest, "files": files}
    (adapter_dir / ADAPTER_MANIFEST).write_text(json.dumps(data, indent=2, default=str))


def read_adapter_manifest(adapter_dir: Path) -> dict[str, Any]:
    """The manifest written beside an adapter (empty if there is none)."""
    path = adapter_dir / ADAPTER_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def verify_adapter_files(adapter_dir: Path) -> list[str]:
    """Files whose sha256 differs from the manifest (or that are missing)."""
    manifest = read_adapter_manifest(adapter_dir)
    bad = []
    for filename, expected in manifest.get("files", {}).items():
        path = adapter_dir / filename
        if not path.is_file() or sha256_file(path) != expected:
            bad.append(filename)
    if not manifest.get("files"):
        bad.append(ADAPTER_MANIFEST)
    return bad


def model_shape(model_path: str) -> ModelShape:
    """The planner's view of the base at `model_path`, read without loading its weights."""
    config = AutoConfig.from_pretrained(model_path)
    return ModelShape.from_config(config, model_param_counts(model_path, config))
