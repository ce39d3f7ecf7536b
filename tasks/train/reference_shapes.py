"""Published configs of the models a 6 GB laptop GPU is asked to train, shapes only.

The values are those of each model's `config.json` on its model card (sizes, heads, vocab,
tying); with them the planner is checked against measured peaks (tests/test_memory_plan.py)
and `bench/vram.py` builds random-weight models that cost what the real ones cost.
"""

from __future__ import annotations

from typing import Any

_QWEN2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
          "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "attention_dropout": 0.0,
          "bos_token_id": 151643, "eos_token_id": 151643}

REFERENCE_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5, "rope_theta": 100_000.0, "bos_token_id": 0, "eos_token_id": 0},
    "qwen2.5-0.5b": {**_QWEN2,  # Qwen/Qwen2.5-0.5B
                     "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2,
                     "vocab_size": 151936, "max_position_embeddings": 32768,
                     "tie_word_embeddings": True},
    "qwen2-1.5b": {**_QWEN2,  # Qwen/Qwen2-1.5B: the shape the table measured
                   "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2,
                   "vocab_size": 151936, "max_position_embeddings": 131072,
                   "tie_word_embeddings": True},
    "qwen2.5-1.5b": {**_QWEN2,  # Qwen/Qwen2.5-1.5B
                     "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2,
                     "vocab_size": 151936, "max_position_embeddings": 131072,
                     "tie_word_embeddings": True},
    "qwen2.5-3b": {**_QWEN2,  # Qwen/Qwen2.5-3B
                   "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2,
                   "vocab_size": 151936, "max_position_embeddings": 32768,
                   "tie_word_embeddings": True},
    "qwen2.5-7b": {**_QWEN2,  # Qwen/Qwen2.5-7B
                   "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4,
                   "vocab_size": 152064, "max_position_embeddings": 131072,
                   "tie_word_embeddings": False},
}


def reference_config(name: str) -> Any:
    """The transformers config object of a reference model (no download)."""
    from transformers import AutoConfig

    values = dict(REFERENCE_CONFIGS[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)
