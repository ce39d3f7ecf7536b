"""How big a base model is, read without loading its weights.

The memory planner needs the parameter count, and how much of it bitsandbytes quantises
(the `nn.Linear` weights of the decoder layers) and how much stays in 16 or 32 bits
(embeddings, an untied output head, norms, biases). The count comes from the safetensors
headers (one `model.safetensors`, or every shard a `model.safetensors.index.json` names)
and, when no weights are there (a config written out to plan for a model not downloaded),
from the config's shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Decoder-only families whose layers are Llama's: attention q/k/v/o, a gated MLP, RMS norms.
# Qwen2 adds q/k/v biases; Qwen3 adds per-head q/k norms.
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "granite", "phi3"}


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a causal LM by how the QLoRA loader stores them."""

    total: int
    quantizable: int  # nn.Linear weights of the decoder layers (4-bit under QLoRA)

    @property
    def unquantized(self) -> int:
        """Embeddings, an untied head, norms and biases: kept in 16 bits, or cast to fp32
        by PEFT's k-bit preparation."""
        return self.total - self.quantizable


def count_checkpoint_params(model_path: str | Path) -> int | None:
    """Parameters in the folder's safetensors weights (single file or shards), None when
    the weights are not all there."""
    folder = Path(model_path)
    if (folder / SINGLE_FILE).is_file():
        return _count_file(folder / SINGLE_FILE)
    index = folder / INDEX_FILE
    if not index.is_file():
        return None
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if not shards or not all((folder / shard).is_file() for shard in shards):
        return None
    return sum(_count_file(folder / shard) for shard in shards)


def count_config_params(config: Any) -> ParamCounts:
    """Parameters of the architecture `config` describes, by arithmetic on its shapes.

    Exact for the Llama-like families (`LLAMA_LIKE`); for another model type it builds the
    model on the meta device (no memory) and counts its parameters.
    """
    if getattr(config, "model_type", None) not in LLAMA_LIKE:
        return _count_meta_model(config)
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q_dim = heads * head_dim
    kv_dim = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = config.intermediate_size
    attention = h * q_dim + 2 * h * kv_dim + q_dim * h
    mlp = 3 * h * inter
    biases = 0
    if config.model_type == "qwen2" or getattr(config, "attention_bias", False):
        biases += q_dim + 2 * kv_dim
    if getattr(config, "attention_bias", False):
        biases += h  # o_proj's
    if getattr(config, "mlp_bias", False):
        biases += 2 * inter + h
    norms = 2 * h + (2 * head_dim if config.model_type == "qwen3" else 0)
    embeddings = config.vocab_size * h
    head = 0 if getattr(config, "tie_word_embeddings", True) else embeddings
    quantizable = layers * (attention + mlp)
    total = quantizable + layers * (biases + norms) + h + embeddings + head
    return ParamCounts(total=total, quantizable=quantizable)


def model_param_counts(model_path: str | Path, config: Any) -> ParamCounts:
    """The folder's parameter counts: the checkpoint's total where its weights are there
    (what will really be loaded), else the config's; the quantisable share from the config."""
    from_config = count_config_params(config)
    from_weights = count_checkpoint_params(model_path)
    if from_weights is None:
        return from_config
    # A checkpoint may hold a few tensors the architecture does not count (or the reverse):
    # keep the quantisable share the architecture says, never more than the checkpoint holds.
    return ParamCounts(total=from_weights, quantizable=min(from_config.quantizable, from_weights))


def _count_file(path: Path) -> int:
    """Elements of every tensor in one safetensors file, from its header only."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            count = 1
            for dim in handle.get_slice(key).get_shape():
                count *= dim
            total += count
    return total


def _count_meta_model(config: Any) -> ParamCounts:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    quantizable = sum(module.weight.numel() for module in model.modules()
                      if isinstance(module, torch.nn.Linear) and module is not head)
    return ParamCounts(total=total, quantizable=quantizable)
