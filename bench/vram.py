"""GPU memory of QLoRA training, per model shape and budget: the planner's estimate against
what the card really held.

For each reference shape (tasks/train/reference_shapes.py: SmolLM2-135M, Qwen2.5-0.5B,
Qwen2.5-1.5B, Qwen2.5-3B, Qwen2.5-7B) and budget, the planner picks a plan (rank 16 on all 7
projections, max_length 320: configs/laptop-6gb.yaml). `--plan-only` prints those plans as
one JSON list and needs no GPU:

    .venv/bin/python bench/vram.py --plan-only

Without it (a CUDA machine) each shape becomes a random-weight model built from its config
(random weights cost the memory real ones do; nothing is downloaded), and each shape and
budget runs `--steps` QLoRA steps through `train_adapter` on rows at max_length, in its own
process, with the allocator capped at the budget less the CUDA context (so a plan that would
not fit a card of that size runs out of memory here too, and the recovery shows). One JSON
object per line: the plan, the estimate, peak allocated and reserved, the CUDA context,
tokens/s after warm-up, and `within_budget` (reserved + context <= budget).

    .venv/bin/python bench/vram.py --budgets 4 6 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GIB = 2**30
MODELS = ["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"]
SERVING_CONTEXT = 2048  # tokens of one serving slot, for the serving footprint


def train_settings(config: str, budget: float) -> Any:
    from evolora.settings import load_settings

    settings = load_settings(config)
    return settings.train.model_copy(update={"vram_budget_gb": budget, "quantization": "nf4"})


def plan_entry(name: str, budget: float, config: str) -> dict[str, Any]:
    """The planner's answer for one shape and budget, as the --plan-only list has it."""
    from tasks.train.memory_plan import (
        DoesNotFit,
        ModelShape,
        estimate_serving_bytes,
        plan_training,
    )
    from tasks.train.reference_shapes import reference_config

    train = train_settings(config, budget)
    shape = ModelShape.from_config(reference_config(name))
    entry: dict[str, Any] = {"model": name, "budget_gib": budget,
                             "max_length": train.max_length, "rank": train.rank,
                             "targets": len(train.target_modules), "n_params": shape.n_params,
                             "serving_4bit_gib": round(estimate_serving_bytes(
                                 shape, "nf4", context_tokens=SERVING_CONTEXT) / GIB, 2)}
    try:
        plan = plan_training(train, shape, "cuda", precision="bf16")
    except DoesNotFit as exc:
        return {**entry, "fits": False, "micro_batch": None, "grad_accum": None,
                "checkpointing": None, "estimate_gib": None, "reason": str(exc)}
    return {**entry, "fits": True, "micro_batch": plan.micro_batch,
            "grad_accum": plan.grad_accum, "checkpointing": plan.gradient_checkpointing,
            "estimate_gib": plan.estimated_peak_gib, "usable_gib": plan.usable_gib}


def build_model(name: str, out: Path) -> Path:
    """A random-weight model of the reference shape, bf16 safetensors, with the packaged
    SmolLM2 tokenizer (its ids are below every shape's vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolora.models import PACKAGED_MODELS
    from tasks.train.reference_shapes import reference_config

    gguf = PACKAGED_MODELS["smollm2-135m"].gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = reference_config(name)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a 7B initialises in seconds there
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="2GB")  # sharded, as real checkpoints are
    tokenizer.save_pretrained(out)
    return out


def long_rows(count: int) -> Any:
    """Chat rows whose reply alone is longer than max_length: every row trains at max_length."""
    from datasets import Dataset

    reply = " ".join(f"Thought: step {i} needs the calculator. Action: calculator" for i in
                     range(80))
    return Dataset.from_list([{"messages": [
        {"role": "system", "content": "Answer with the tools."},
        {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
        {"role": "assistant", "content": reply}]} for i in range(count)])


def run_one(name: str, budget: float, config: str, model_dir: Path, steps: int,
            out: Path) -> dict[str, Any]:
    """Train `steps` QLoRA steps on the built model with the allocator capped at the budget."""
    import torch

    from evolora.tracking import setup_mlflow
    from tasks.train import train_adapter

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the context exists from here
    context = _own_gpu_bytes() - torch.cuda.memory_reserved()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(max(0.01, (budget * GIB - context) / total))
    settings = _settings(config, budget, model_dir, steps, out)
    setup_mlflow(settings)
    effective = settings.train.batch_size or 8
    result = train_adapter(settings, str(model_dir), long_rows(steps * effective * 2),
                           out / "adapters", f"vram-{name}", max_steps=steps)
    metrics = result.metrics
    reserved = metrics["peak_vram_reserved_mb"] / 1024
    return {
        "model": name, "budget_gib": budget, "device": torch.cuda.get_device_name(0),
        "plan": result.plan.to_dict(), "estimate_gib": result.plan.estimated_peak_gib,
        "peak_allocated_gib": round(metrics["peak_vram_mb"] / 1024, 2),
        "peak_reserved_gib": round(reserved, 2),
        "cuda_context_gib": round(context / GIB, 2),
        "card_peak_gib": round(reserved + context / GIB, 2),
        "within_budget": reserved + context / GIB <= budget,
        "estimate_covers_reserved": result.plan.estimated_peak_gib >= reserved + context / GIB,
        "tokens_per_s": round(metrics["train_tokens_per_s"], 1),
        "timed_steps": int(metrics["train_timed_steps"]),
        "timing_includes_warmup": bool(metrics["train_timing_includes_warmup"]),
        "oom_fallbacks": [f["change"] for f in result.oom_fallbacks],
    }


def _own_gpu_bytes() -> int:
    """This process's GPU memory as the driver counts it (context included), via NVML;
    without NVML, the planner's assumed context over what torch reserved."""
    import torch

    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory:
                return int(process.usedGpuMemory)
    except Exception:  # no NVML, or it cannot see processes (a container): assume
        pass
    from tasks.train.memory_plan import CUDA_CONTEXT_BYTES

    return int(CUDA_CONTEXT_BYTES + torch.cuda.memory_reserved())


def _settings(config: str, budget: float, model_dir: Path, steps: int, out: Path) -> Any:
    from evolora.settings import load_settings

    settings = load_settings(config)
    return settings.model_copy(update={
        "model": settings.model.model_copy(update={"base": str(model_dir)}),
        "train": train_settings(config, budget).model_copy(
            update={"max_steps": steps, "logging_steps": 1}),
        "paths": settings.paths.model_copy(update={"data_dir": out / "data",
                                                   "mlruns_dir": out / "mlruns",
                                                   "tracking_uri": None}),
    })


def child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.build:
        build_model(args.model, Path(args.model_dir))
        return
    result = run_one(args.model, args.budget, args.config, Path(args.model_dir), args.steps, out)
    (out / "result.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan-only", action="store_true", help="print the plans; no GPU")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[4.0, 6.0])
    parser.add_argument("--config", default="laptop-6gb")
    parser.add_argument("--steps", type=int, default=6, help="QLoRA steps per run (2 warm-up)")
    for hidden in ("--model", "--model-dir", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("EVOLORA_TEACHER__ENABLED", "false")
    if args.child:
        child(args)
        return
    plans = [plan_entry(name, budget, args.config)
             for name in args.models for budget in args.budgets]
    if args.plan_only:
        print(json.dumps(plans, indent=2))
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/vram.py needs a CUDA device to measure; --plan-only runs anywhere")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            fitting = [p for p in plans if p["model"] == name and p["fits"]]
            for entry in (p for p in plans if p["model"] == name and not p["fits"]):
                print(json.dumps({**entry, "measured": False}), flush=True)
            if not fitting:
                continue  # refused before it starts: nothing to measure
            model_dir = Path(folder) / name
            _spawn(["--build", "--model", name, "--model-dir", str(model_dir)], Path(folder))
            for entry in fitting:
                out = Path(folder) / f"{name}-{entry['budget_gib']}"
                out.mkdir()
                _spawn(["--model", name, "--model-dir", str(model_dir), "--budget",
                        str(entry["budget_gib"]), "--config", args.config, "--steps",
                        str(args.steps)], out)
                print((out / "result.json").read_text(), flush=True)


def _spawn(arguments: list[str], out: Path) -> None:
    """One child process: CUDA memory statistics and the allocator cap are its own."""
    subprocess.run([sys.executable, __file__, "--child", "--out", str(out), *arguments],
                   check=True, stdout=sys.stderr)


if __name__ == "__main__":
    main()
