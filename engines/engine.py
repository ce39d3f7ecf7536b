"""What serving and evaluation need of an inference engine, and how to open the configured one.

Two engines implement `InferenceEngine`: `LlamaCppEngine` (the default: llama.cpp with GGUF
LoRA adapters, parallel slots) and `ModelRuntime` (transformers + PEFT, the reference). Both
take the adapter per call, so callers never switch a shared "active adapter" themselves.

    engine = open_engine(settings, model_path)
    engine.attach("v3", peft_dir)
    engine.generate(prompts, adapter="v3", stop=["Observation:"])
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engines.transformers_runtime import BASE_ADAPTER, AdapterError

if TYPE_CHECKING:
    from evolora.settings import Settings


class EngineError(RuntimeError):
    """An engine that cannot open (no GGUF for the base, ...); the message says the fix."""


class ContextExceeded(AdapterError):
    """A prompt (with what a request may generate) longer than the engine's context."""


class GenerationTimeout(AdapterError):
    """A generation cancelled because it ran past its wall-clock limit
    (serving.generation_timeout_s); the engine freed what it held."""


class InferenceEngine(Protocol):
    """Generation on a base model plus named adapters, safe to call from many threads."""

    engine_name: str

    @property
    def adapters(self) -> Mapping[str, str]:
        """Attached adapter name -> the folder it came from."""
        ...

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        ...

    def count_tokens(self, text: str) -> int:
        ...

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, adapter: str | None = None) -> list[str]:
        ...

    def stream(self, prompt: str, *, adapter: str, max_new_tokens: int = 96,
               stop: list[str] | None = None, temperature: float = 0.0, top_p: float = 1.0
               ) -> Generator[str, None, None]:
        """The reply's pieces as generated; closing the generator early stops generation."""
        ...

    def attach(self, name: str, adapter_dir: str | Path) -> float:
        """Load an adapter; returns the seconds generation was blocked by it."""
        ...

    def detach(self, name: str) -> None:
        ...

    def close(self) -> None:
        ...


@dataclass
class AdapterView:
    """An engine with one adapter chosen: the `TextGenerator` the ReAct loop runs on."""

    engine: InferenceEngine
    adapter: str = BASE_ADAPTER

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return self.engine.chat_prompt(messages, assistant_prefix)

    @property
    def concurrent_requests(self) -> int:
        """How many single-prompt requests the engine decodes together (1: it batches)."""
        return int(getattr(self.engine, "concurrent_requests", 1))

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0) -> list[str]:
        return self.engine.generate(prompts, max_new_tokens=max_new_tokens, stop=stop,
                                    temperature=temperature, top_p=top_p, adapter=self.adapter)


def base_gguf_path(model_path: str | Path, configured: Path | None = None) -> Path:
    """The GGUF of a prepared base: `model.gguf` when set, else the packaged GGUF the folder
    was prepared from (its manifest), else `model.gguf` or the one `.gguf` file inside the
    folder."""
    from evolora.models import read_manifest

    if configured is not None:
        if not Path(configured).is_file():
            raise EngineError(f"model.gguf {configured} does not exist; point it at the base "
                              "model's GGUF file")
        return Path(configured)
    folder = Path(model_path)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None and Path(manifest["source"]["path"]).is_file():
        return Path(manifest["source"]["path"])
    if (folder / "model.gguf").is_file():
        return folder / "model.gguf"
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise EngineError(f"no GGUF for the base model {model_path}: the llama.cpp engine needs "
                      "one; set model.gguf to the base's GGUF file, or serving.engine: "
                      "transformers")


def open_engine(settings: Settings, model_path: str, *, slots: int | None = None,
                adapters: Mapping[str, Path] | None = None,
                generation_timeout_s: float | None = None) -> InferenceEngine:
    """The configured engine (`serving.engine`) on the prepared base at `model_path`, with
    `adapters` (name -> PEFT folder) attached. `generation_timeout_s` replaces the service's
    limit on one reply (`serving.generation_timeout_s`) for batch work: a batch of a
    cycle's evaluation on a busy machine may queue for longer than a user would wait."""
    from engines.transformers_runtime import ModelRuntime, inference_quantization, pick_device

    if settings.serving.engine == "transformers":
        device = pick_device()
        runtime = ModelRuntime.load(
            model_path, settings.model.dtype, device,
            inference_quantization(settings.train.quantization, device),
            oom_fallback_after=settings.serving.oom_cpu_fallback_after,
            fault_oom_calls=frozenset(settings.serving.fault_oom_requests),
            generation_timeout_s=generation_timeout_s or settings.serving.generation_timeout_s)
        for name, adapter_dir in (adapters or {}).items():
            runtime.attach(name, adapter_dir)
        return runtime
    from engines.llamacpp_engine import LlamaCppEngine
    from evolora.models import cpu_threads

    return LlamaCppEngine(
        base_gguf_path(model_path, settings.model.gguf), model_path,
        work_dir=settings.paths.data_dir / "engine" / "adapters",
        slots=slots or settings.serving.parallel_slots,
        slot_context=settings.serving.slot_context,
        threads=cpu_threads(settings.model.threads), adapters=adapters,
        request_timeout_s=generation_timeout_s or settings.serving.generation_timeout_s)
