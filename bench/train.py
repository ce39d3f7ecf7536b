"""Training throughput: evolora's training path vs a plain transformers + PEFT loop.

Both train the same LoRA (rank, targets, lr) on the same rows of the same data, for the
same number of optimiser steps at the same batch size and precision (bf16 autocast where the
CPU has native bf16, else float32), each in its own
process (so each peak RSS is its own). Prints one JSON object:

    {"ours": {...}, "plain": {...}, "speedup": ours_tokens_per_s / plain_tokens_per_s}

Tokens counted are the real (non-padding) tokens each path fed through the model, over the
steps after the first 2 (warm-up) when there are more than 2.

    .venv/bin/python bench/train.py --config demo --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 8
WARMUP_STEPS = 2  # tasks/train/callbacks.TIMING_WARMUP_STEPS: both sides time the steps after


def run_ours(config: str, steps: int, rows: int, out: Path) -> dict[str, Any]:
    from evolora.settings import load_settings
    from evolora.tracking import setup_mlflow
    from tasks.data import build_splits
    from tasks.train import train_adapter

    settings = load_settings(config)
    settings = settings.model_copy(update={
        "train": settings.train.model_copy(update={"batch_size": BATCH, "grad_accum": 1,
                                                   "logging_steps": steps}),
        "paths": settings.paths.model_copy(update={"mlruns_dir": out / "mlruns",
                                                   "tracking_uri": None}),
    })
    setup_mlflow(settings)
    bundle = build_splits(settings.data, settings.paths.data_dir)
    train_rows = bundle.train.shuffle(seed=0).select(range(min(rows, len(bundle.train))))
    model_path = _model_path(settings)
    started = time.perf_counter()
    result = train_adapter(settings, model_path, train_rows, out / "adapters", "bench",
                           max_steps=steps)
    return {"tokens_per_s": result.metrics["train_tokens_per_s"],
            "wall_s": time.perf_counter() - started,
            "train_wall_s": result.metrics["train_wall_s"],
            "final_loss": result.metrics["train_loss"]}


def run_plain(config: str, steps: int, rows: int, out: Path) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.transformers_runtime import native_bf16
    from evolora.settings import load_settings
    from tasks.data import build_splits

    settings = load_settings(config)
    train = settings.train
    bundle = build_splits(settings.data, settings.paths.data_dir)
    train_rows = bundle.train.shuffle(seed=0).select(range(min(rows, len(bundle.train))))
    model_path = _model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # The same precision rule as ours: bf16 where the CPU has it natively, else float32.
    bf16 = native_bf16("cpu")
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=train.rank, lora_alpha=train.alpha, lora_dropout=train.dropout,
        target_modules=list(train.target_modules), task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=train.learning_rate)
    examples = []
    for row in train_rows:
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False,
                                               add_generation_prompt=True)
        full = prompt + row["messages"][-1]["content"] + tokenizer.eos_token
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:train.max_length]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        labels = [-100] * n_prompt + ids[n_prompt:]
        examples.append((ids, labels[:len(ids)]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = 0
    started = time.perf_counter()
    timed_from = (started, 0)  # ours times tokens/s after 2 warm-up steps: so does this side
    for step in range(steps):
        if step == WARMUP_STEPS:
            timed_from = (time.perf_counter(), tokens)
        batch = [examples[(step * BATCH + i) % len(examples)] for i in range(BATCH)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    now = time.perf_counter()
    wall = now - started
    return {"tokens_per_s": (tokens - timed_from[1]) / (now - timed_from[0]), "wall_s": wall,
            "train_wall_s": wall, "final_loss": float(loss)}


def _model_path(settings: Any) -> str:
    from evolora.models import prepare_model, resolve_base_model

    if not Path(settings.model.base).is_dir():
        prepare_model(settings.model.base, settings.paths.models_dir, settings.model.dtype)
    return resolve_base_model(settings.model.base, settings.paths.models_dir)


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("EVOLORA_TEACHER__ENABLED", "false")
    out = Path(args.out)
    runner = run_ours if args.path == "ours" else run_plain
    result = runner(args.config, args.steps, args.rows, out)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "result.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--path", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:
        child(args)
        return
    report: dict[str, Any] = {"config": args.config, "steps": args.steps, "batch": BATCH}
    for path in ("plain", "ours"):
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run([sys.executable, __file__, "--path", path, "--config", args.config,
                            "--steps", str(args.steps), "--rows", str(args.rows),
                            "--out", folder], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            report[path] = json.loads((Path(folder) / "result.json").read_text())
    report["speedup"] = report["ours"]["tokens_per_s"] / report["plain"]["tokens_per_s"]
    report["ours_at_least_as_fast"] = report["speedup"] >= 1.0
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
