"""A prepared Llama-architecture base written back as a full-precision GGUF.

The packaged bases are Q4 GGUFs; `evolora models prepare` dequantises them (to bf16 by
default) and that is the model the adapters are trained on. llama.cpp on the packaged Q4
file runs the same model up to weight rounding and its 8-bit activations, which is enough
to flip some greedy tokens. This file is the exact trained weights in float32 (or float16),
with the tokenizer and chat template copied from the GGUF the base came from, q/k rows
permuted the way llama.cpp's converter stores a Llama. Point `model.gguf` at it for
token-level parity with the transformers engine, at some speed (docs/service.md).

    export_base_gguf(model_dir, source_gguf, out_path, dtype="float32")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engines.gguf_lora import AdapterConversionError, _permute_rows

# HF module -> GGUF tensor, per layer ({i} the layer index).
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def export_base_gguf(model_dir: Path, source_gguf: Path, out_path: Path,
                     dtype: str = "float32") -> Path:
    """Write the HF Llama folder `model_dir` as a GGUF at `out_path` (atomically)."""
    import os
    import tempfile

    import gguf
    import torch
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise AdapterConversionError(
            f"{model_dir} is a {config.get('model_type')!r} model; only Llama-architecture "
            "bases are written back as GGUF (use the packaged GGUF)")
    if dtype not in ("float32", "float16"):
        raise AdapterConversionError(f"dtype {dtype!r}: use float32 or float16")
    numpy_dtype = np.float32 if dtype == "float32" else np.float16
    weights = {name: tensor.to(torch.float32).numpy()
               for name, tensor in load_file(str(model_dir / "model.safetensors")).items()}
    source = gguf.GGUFReader(str(source_gguf))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}-", dir=out_path.parent)
    os.close(handle)
    try:
        _write(gguf.GGUFWriter(tmp_name, "llama"), config, weights, source, numpy_dtype)
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def _write(writer: Any, config: dict[str, Any], weights: dict[str, np.ndarray], source: Any,
           numpy_dtype: type) -> None:
    import gguf

    heads, heads_kv = config["num_attention_heads"], config["num_key_value_heads"]
    writer.add_name(config.get("_name_or_path") or "evolora-base")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads_kv)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    rope = config.get("rope_parameters") or {}  # transformers 5 keeps rope_theta here
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    file_type = gguf.LlamaFileType
    writer.add_file_type(file_type.ALL_F32 if numpy_dtype is np.float32 else file_type.MOSTLY_F16)
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    # Norms stay float32 (llama.cpp expects them so); matrices take the chosen dtype.
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"].astype(
        numpy_dtype))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights and not config.get("tie_word_embeddings"):
        writer.add_tensor("output.weight", weights["lm_head.weight"].astype(numpy_dtype))
    for layer in range(config["num_hidden_layers"]):
        for hf_name, gguf_name in _LAYER_TENSORS.items():
            tensor = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = _permute_rows(tensor, heads)
            elif gguf_name == "attn_k":
                tensor = _permute_rows(tensor, heads_kv)
            if tensor.ndim == 2:
                tensor = tensor.astype(numpy_dtype)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
