"""Real adapters for the merge and mutation tests: made on the tiny model, then read back
as each module's dense delta, a distance, or the model's logits."""

from __future__ import annotations

from pathlib import Path

import torch

from tasks.evolve.adapter_files import read_lora_modules
from tasks.evolve.adapter_math import mean_module_distance


def delta_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Each adapted module's dense update `scaling * B @ A` (float32), by module path."""
    return {name: module.delta() for name, module in read_lora_modules(adapter_dir).items()}


def adapter_distance(a: Path, b: Path) -> float:
    """Mean (1 - cosine similarity) of the two adapters' deltas over shared modules, in [0, 2].

    Rank-independent (computed from the factors); 0 for identical adapters.
    """
    return mean_module_distance(read_lora_modules(a), read_lora_modules(b))


def make_adapter(base_dir: Path, out: Path, *, rank: int, targets: list[str], seed: int,
                 use_rslora: bool = False) -> Path:
    """A real PEFT adapter with random (non-zero) B, written by save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                        use_rslora=use_rslora, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    peft_model.save_pretrained(str(out))
    return out


def tiny_adapters(base_dir: Path, root: Path) -> dict[str, Path]:
    """Five real adapters of the tiny model: a, b (rank 4), r8 (rank 8), q_only, v_only."""
    qv = ["q_proj", "v_proj"]
    return {
        "a": make_adapter(base_dir, root / "a", rank=4, targets=qv, seed=1),
        "b": make_adapter(base_dir, root / "b", rank=4, targets=qv, seed=2),
        "r8": make_adapter(base_dir, root / "r8", rank=8, targets=qv, seed=3),
        "q_only": make_adapter(base_dir, root / "q_only", rank=4, targets=["q_proj"], seed=4),
        "v_only": make_adapter(base_dir, root / "v_only", rank=4, targets=["v_proj"], seed=5),
    }


def logits_with(base_dir: Path, adapter_dir: Path | None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        return model.eval()(torch.arange(1, 17)[None]).logits


def assert_close_deltas(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                        ) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())
