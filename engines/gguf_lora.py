"""PEFT LoRA folder -> GGUF LoRA adapter that llama.cpp (and Ollama's `ADAPTER`) loads.

    gguf_path = convert_adapter(peft_dir, base_gguf, out_path)

The file holds one `<base tensor>.lora_a` / `.lora_b` pair per adapted projection
(`blk.N.attn_q.weight.lora_a`, ...), names from the `gguf` package's own tensor-name map.
Each pair is written with PEFT's scaling already folded into `lora_b`, and
`adapter.lora.alpha = 0`, which llama.cpp reads as "scale 1": one rule that covers plain,
rank-stabilised (`use_rslora`) and per-module (`rank_pattern` / `alpha_pattern`) adapters
alike, the unequal-rank merges of `tasks/evolve` included.

llama.cpp stores a llama-architecture base with the rows of `attn_q` / `attn_k` permuted
(its converter interleaves the rotary halves); a LoRA delta `B @ A` adds to those rows, so
`lora_b` gets the same permutation. The file is written beside its target and renamed into
place, with `<name>.sha256` next to it: no reader ever sees half an adapter.

Refused with `AdapterConversionError` (a one-line cause and fix): DoRA, `modules_to_save`,
embedding or `lm_head` targets, bias training, any weight that is not a LoRA A/B matrix, and
an adapter whose shapes do not fit the base GGUF (a different base model).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evolora.logs import get_logger

log = get_logger(__name__)

ADAPTER_GGUF_NAME = "adapter.gguf"
# Architectures whose base GGUF has the q/k rows permuted by llama.cpp's converter.
PERMUTED_ARCHITECTURES = frozenset({"llama"})
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_REFUSED_TARGETS = ("embed_tokens", "lm_head", "wte", "embed_out", "output")


class AdapterConversionError(ValueError):
    """A PEFT adapter that cannot become a GGUF LoRA; the message names the cause and fix."""


@dataclass(frozen=True)
class BaseShapes:
    """What the converter needs of a base GGUF: architecture, heads and tensor shapes."""

    architecture: str
    block_count: int
    head_count: int
    head_count_kv: int
    # GGUF tensor name -> (in_features, out_features), the GGUF's own ne[0], ne[1].
    tensors: dict[str, tuple[int, int]]

    @classmethod
    def read(cls, base_gguf: Path) -> BaseShapes:
        """The base's shapes; parsed once per file version (parsing the GGUF's tokenizer
        arrays takes seconds, and every hot-swapped version is converted against it)."""
        stat = Path(base_gguf).stat()
        return _read_shapes(str(Path(base_gguf).resolve()), stat.st_mtime_ns, stat.st_size)

    @classmethod
    def parse(cls, base_gguf: Path) -> BaseShapes:
        from gguf import GGUFReader

        reader = GGUFReader(str(base_gguf))
        arch = _field_value(reader, "general.architecture")
        if not isinstance(arch, str):
            raise AdapterConversionError(f"{base_gguf} has no general.architecture; "
                                         "is it a GGUF model file?")
        heads = int(_field_value(reader, f"{arch}.attention.head_count") or 0)
        heads_kv = int(_field_value(reader, f"{arch}.attention.head_count_kv") or heads)
        blocks = int(_field_value(reader, f"{arch}.block_count") or 0)
        tensors = {t.name: (int(t.shape[0]), int(t.shape[1]))
                   for t in reader.tensors if len(t.shape) == 2}
        return cls(arch, blocks, heads, heads_kv, tensors)


@functools.lru_cache(maxsize=8)
def _read_shapes(path: str, _mtime_ns: int, _size: int) -> BaseShapes:
    return BaseShapes.parse(Path(path))


def _field_value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    return field.contents()


def read_adapter_config(peft_dir: Path) -> dict[str, Any]:
    """The adapter_config.json of a PEFT folder, checked for what llama.cpp can run."""
    config_path = peft_dir / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterConversionError(f"{peft_dir} is not a PEFT adapter folder "
                                     "(no adapter_config.json)")
    config = json.loads(config_path.read_text())
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterConversionError(f"{peft_dir}: peft_type {config.get('peft_type')!r} is "
                                     "not LoRA; only LoRA adapters convert to GGUF")
    if config.get("use_dora"):
        raise AdapterConversionError(f"{peft_dir}: DoRA adapters have no GGUF form; train "
                                     "with use_dora=false or serve with serving.engine: "
                                     "transformers")
    if config.get("modules_to_save"):
        raise AdapterConversionError(
            f"{peft_dir}: modules_to_save={config['modules_to_save']} trains whole modules, "
            "which a GGUF LoRA cannot carry; retrain without modules_to_save")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    refused = [t for t in targets if any(part in t for part in _REFUSED_TARGETS[:4])]
    if refused:
        raise AdapterConversionError(
            f"{peft_dir}: the adapter trains {refused} (an embedding or output layer); "
            "llama.cpp LoRA covers the layers' projections only: retrain without it in "
            "target_modules")
    if config.get("bias", "none") != "none":
        raise AdapterConversionError(f"{peft_dir}: bias={config['bias']!r} trains biases; "
                                     "retrain with bias='none'")
    return config


def _module_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha / r (or alpha / sqrt(r) with rsLoRA)."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    denominator = math.sqrt(rank) if config.get("use_rslora") else rank
    return alpha / denominator


def _permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: each head's two rotary halves interleaved."""
    rows = weights.shape[0]
    return (weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf_target(name_map: Any, module: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `blk.3.attn_q.weight` (None if unknown)."""
    if any(module.endswith(part) for part in _REFUSED_TARGETS):
        raise AdapterConversionError(
            f"the adapter trains {module!r} (an embedding or output layer); llama.cpp LoRA "
            "covers the layers' projections only: retrain without it in target_modules")
    target = name_map.get_name(f"{module}.weight", try_suffixes=(".weight",))
    if target is None:
        raise AdapterConversionError(f"the adapter targets {module!r}, which has no GGUF "
                                     "tensor name for this architecture")
    return str(target)


def lora_pairs(peft_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """module -> {"A": (r, in), "B": (out, r)} as float32 arrays, refusing anything else."""
    from safetensors.numpy import load_file

    weights_path = peft_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise AdapterConversionError(f"{peft_dir} has no adapter_model.safetensors")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(weights_path)).items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise AdapterConversionError(
                f"{peft_dir}: weight {key!r} is not a LoRA A/B matrix (DoRA magnitudes, saved "
                "modules and embedding LoRA have no GGUF form)")
        pairs.setdefault(match["module"], {})[match["part"]] = value.astype(np.float32)
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterConversionError(f"{peft_dir}: {module} has lora_{''.join(pair)} "
                                         "only; the adapter file is incomplete")
    if not pairs:
        raise AdapterConversionError(f"{peft_dir} holds no LoRA weights")
    return pairs


def convert_adapter(peft_dir: Path, base_gguf: Path, out_path: Path) -> Path:
    """Write the GGUF LoRA for a PEFT folder and base GGUF; returns `out_path`.

    Atomic: written to a temporary file beside `out_path`, then renamed; `out_path.sha256`
    is written the same way. Raises AdapterConversionError for unsupported adapters.
    """
    import gguf

    peft_dir, base_gguf, out_path = Path(peft_dir), Path(base_gguf), Path(out_path)
    config = read_adapter_config(peft_dir)
    pairs = lora_pairs(peft_dir)
    base = BaseShapes.read(base_gguf)
    arch_id = next((key for key, name in gguf.MODEL_ARCH_NAMES.items()
                    if name == base.architecture), None)
    if arch_id is None:
        raise AdapterConversionError(f"the gguf package does not know architecture "
                                     f"{base.architecture!r} of {base_gguf.name}")
    name_map = gguf.get_tensor_name_map(arch_id, base.block_count)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}-", dir=out_path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), base.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        # 0 means "no alpha": llama.cpp then scales by the request's scale alone, and
        # PEFT's alpha / r is already folded into lora_b below.
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
        writer.add_string("evolora.source_adapter", peft_dir.name)
        for module in sorted(pairs, key=_natural_key):
            target = _gguf_target(name_map, module)
            a, b = pairs[module]["A"], pairs[module]["B"]
            _check_fits(base, target, a, b, base_gguf)
            b = b * _module_scale(config, module, a.shape[0])
            if base.architecture in PERMUTED_ARCHITECTURES:
                if target.endswith("attn_q.weight"):
                    b = _permute_rows(b, base.head_count)
                elif target.endswith("attn_k.weight"):
                    b = _permute_rows(b, base.head_count_kv)
            writer.add_tensor(f"{target}.lora_a", np.ascontiguousarray(a))
            writer.add_tensor(f"{target}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        from evolora.models import sha256_file

        digest = sha256_file(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_atomically(checksum_path(out_path), f"{digest}  {out_path.name}\n")
    log.info("gguf_lora.converted", adapter=str(peft_dir), out=str(out_path),
             modules=len(pairs), bytes=out_path.stat().st_size)
    return out_path


def checksum_path(gguf_path: Path) -> Path:
    return gguf_path.with_name(gguf_path.name + ".sha256")


def verify_checksum(gguf_path: Path) -> bool:
    """Whether the file matches the sha256 written beside it at conversion."""
    from evolora.models import sha256_file

    recorded = checksum_path(gguf_path)
    if not gguf_path.is_file() or not recorded.is_file():
        return False
    return recorded.read_text().split()[0] == sha256_file(gguf_path)


def _check_fits(base: BaseShapes, target: str, a: np.ndarray, b: np.ndarray,
                base_gguf: Path) -> None:
    if target not in base.tensors:
        raise AdapterConversionError(f"the base {base_gguf.name} has no tensor {target}; the "
                                     "adapter was trained on a different base model")
    in_features, out_features = base.tensors[target]
    if a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
        raise AdapterConversionError(
            f"{target}: adapter shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the "
            f"base's ({out_features} x {in_features}) in {base_gguf.name}; the adapter was "
            "trained on a different base model")


def _natural_key(module: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", module)]


def _write_atomically(path: Path, text: str) -> None:
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp_name, path)
