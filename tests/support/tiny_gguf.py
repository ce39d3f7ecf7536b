"""The tiny test model as a GGUF, so the llama.cpp engine runs in tests in seconds.

The tiny model (tests/conftest.py) is a random 2-layer Llama with the real SmolLM2
tokenizer, so its GGUF takes the tokenizer and chat template straight from the packaged
SmolLM2 GGUF and writes its own hyperparameters and float32 weights, q/k rows permuted the
way llama.cpp's converter stores a Llama. Test support only: a real base comes as a GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engines.gguf_lora import _permute_rows
from evolora.models import PACKAGED_MODELS

# HF module -> GGUF tensor, per layer ({i} the layer index).
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_tiny_gguf(model_dir: Path, out_name: str = "model.gguf") -> Path:
    """Write `<model_dir>/<out_name>` from the HF folder; returns its path."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    weights = {k: v.astype(np.float32) for k, v in
               load_file(str(model_dir / "model.safetensors")).items()}
    source = gguf.GGUFReader(str(PACKAGED_MODELS["smollm2-135m"].gguf_path()))
    out = model_dir / out_name
    writer = gguf.GGUFWriter(str(out), "llama")
    heads, heads_kv = config["num_attention_heads"], config["num_key_value_heads"]
    writer.add_name("evolora-tiny")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads_kv)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    for layer in range(config["num_hidden_layers"]):
        for hf_name, gguf_name in _LAYER_TENSORS.items():
            tensor = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = _permute_rows(tensor, heads)
            elif gguf_name == "attn_k":
                tensor = _permute_rows(tensor, heads_kv)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
