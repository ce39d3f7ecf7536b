"""Train one LoRA/QLoRA adapter with TRL's SFTTrainer, tracked as an MLflow run.

`train_adapter` reads top to bottom: plan memory, load the base (4-bit on CUDA by default),
wrap it in LoRA, train on prompt/completion pairs (loss on the assistant's ReAct trace
only), then write the adapter folder atomically with its manifest and log it to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from transformers import AutoConfig, PrinterCallback, ProgressCallback, TrainerCallback

from engines.transformers_runtime import load_tokenizer, pick_device
from evolora.logs import get_logger
from evolora.models import base_model_checksum, sha256_file
from evolora.progress import current
from evolora.settings import Settings, TrainSettings
from evolora.tracking import log_resolved_config, start_step_run
from evolora.vocabulary import STEP_TAG
from tasks.train.memory_plan import ModelShape, TrainPlan, plan_training

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


def to_prompt_completion(rows: Any) -> Any:
    """Split each chat example into prompt (system + user) and completion (the trace).

    TRL computes the loss on the completion only for this layout, so the model learns the
    ReAct trace and not to echo the system prompt.
    """
    def split(row: dict[str, Any]) -> dict[str, Any]:
        messages = row["messages"]
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return rows.map(split, remove_columns=rows.column_names)


class MlflowStepLogger(TrainerCallback):
    """Logs loss, learning rate, tokens/s and peak memory at every logging step."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not logs:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        metrics = {k: float(v) for k, v in logs.items()
                   if isinstance(v, int | float) and k in {"loss", "learning_rate", "grad_norm"}}
        tokens = getattr(state, "num_input_tokens_seen", 0) or 0
        if tokens:
            metrics["tokens_per_s"] = tokens / elapsed
        metrics["peak_rss_mb"] = peak_rss_mb()
        if torch.cuda.is_available():
            metrics["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
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


# Architectures whose logits are exactly `lm_head(last hidden state)`, with a final soft cap
# where their config sets one: the completion-only loss below may compute them itself.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "smollm3"}


def completion_loss(causal_lm: Any, inputs: dict[str, Any],
                    num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss on the labelled (completion) tokens, with the vocabulary head run
    on those positions only.

    The prompt is ~half of each example's tokens and its labels are -100; the model's own
    forward still projects every position onto the 49k-token vocabulary and keeps those
    logits for backward. Running the head where a label is cuts that part of a CPU step;
    the loss and its gradients are the model's own (a test checks both).
    """
    body = {k: v for k, v in inputs.items() if k in {"input_ids", "attention_mask",
                                                     "position_ids"}}
    hidden = causal_lm.get_decoder()(**body).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    total = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum")
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    return total / keep.sum().clamp(min=1)


def _lean_trainer_class() -> type:
    from transformers import Trainer
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is the plain causal-LM loss on the collator's labels.

        TRL's own loss path also computes per-token entropy and top-1 accuracy over the
        49k-vocabulary head for its logs: ~9% of a CPU step (bench/train.py). The labels
        already mask the prompt (-100), so the loss is the same completion-only loss; for
        plain-head architectures the head runs on the completion positions only
        (`completion_loss`).
        """

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
                return completion_loss(causal_lm, lean, scaled)
            return Trainer.compute_loss(self, model, lean, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return LeanSFTTrainer


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
) -> TrainResult:
    """Train a LoRA on `train_rows` (chat examples) and save it as `adapters_dir/name`.

    `init_adapter` continues training an existing adapter; `manifest_extra` (genealogy,
    data mix) is merged into the manifest written beside the adapter.
    """
    from trl import SFTConfig

    LeanSFTTrainer = _lean_trainer_class()  # built lazily: importing trl is slow

    train = settings.train
    seed = train.seed if seed is None else seed
    device = pick_device()
    config = AutoConfig.from_pretrained(model_path)
    n_params = _count_params_from_config(model_path)
    plan = plan_training(train, ModelShape.from_config(config, n_params), device)
    log.info("train.plan", name=name, **plan.to_dict())

    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"  # training pads on the right
    model = load_for_training(model_path, plan, train, init_adapter)
    dataset = to_prompt_completion(train_rows)

    adapters_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=adapters_dir))
    steps = max_steps or train.max_steps
    sft_config = SFTConfig(
        output_dir=str(staging / "trainer"),
        max_length=train.max_length,
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.grad_accum,
        gradient_checkpointing=plan.gradient_checkpointing,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=max(1, steps // 20),
        max_steps=steps,
        logging_steps=train.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=plan.mixed_precision == "bf16",
        fp16=plan.mixed_precision == "fp16",
        use_cpu=device == "cpu",
        # Real tokens only, so tokens/s is honest about padding.
        include_num_input_tokens_seen="non_padding",
        # Batches of similar lengths: traces vary 2x in length, and padding is compute
        # thrown away on a CPU (about a third of each batch without this).
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
    )
    step_logger = MlflowStepLogger()
    trainer = LeanSFTTrainer(model=model, args=sft_config, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[step_logger, StepProgress()])
    for console_callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(console_callback)  # the progress display shows the steps
    run_tags = {STEP_TAG: "train", "evolora.adapter": name, **(tags or {})}
    try:
        with start_step_run(f"train-{name}", parent_run_id, run_tags) as run:
            log_resolved_config(settings, {"name": name, "seed": seed, "max_steps": steps,
                                           "plan": plan.to_dict()})
            if dataset_hashes and dataset_hashes.get("train"):
                from tasks.data import log_dataset_to_mlflow

                # This member's own rows (a specialist's subset), hashed as trained on.
                log_dataset_to_mlflow(train_rows, f"train-{name}",
                                      _rows_hash(train_rows), "training")
            started = time.perf_counter()
            # The Trainer prints each log dict on stdout; stdout belongs to the CLI's output
            # (`--json`), so those lines go to stderr with the progress bar.
            with contextlib.redirect_stdout(sys.stderr):
                output = trainer.train()
            wall = time.perf_counter() - started
            tokens = trainer.state.num_input_tokens_seen or 0
            metrics = {
                "train_loss": float(output.training_loss),
                "train_wall_s": wall,
                "train_tokens_per_s": tokens / wall if wall else 0.0,
                "peak_rss_mb": peak_rss_mb(),
            }
            if torch.cuda.is_available():
                metrics["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
            mlflow.log_metrics(metrics)
            adapter_dir = _save_adapter(
                trainer.model, staging, adapters_dir / name,
                manifest={
                    "name": name,
                    "base_model": model_path,
                    "base_model_sha256": base_model_checksum(model_path),
                    "seed": seed,
                    "train": train.model_dump(mode="json"),
                    "plan": plan.to_dict(),
                    "dataset_hashes": dataset_hashes or {},
                    "metrics": metrics,
                    "tags": tags or {},
                    "mlflow_run_id": run.info.run_id,
                    "init_adapter": str(init_adapter) if init_adapter else None,
                    **(manifest_extra or {}),
                },
            )
            mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("train.done", name=name, path=str(adapter_dir), **metrics)
    return TrainResult(name, adapter_dir, run.info.run_id, plan, metrics)


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


def _count_params_from_config(model_path: str) -> int:
    """Parameter count read from the safetensors header, without loading the weights."""
    from safetensors import safe_open

    weights = Path(model_path) / "model.safetensors"
    if not weights.is_file():
        return 0
    total = 0
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            count = 1
            for dim in handle.get_slice(key).get_shape():
                count *= dim
            total += count
    return total
