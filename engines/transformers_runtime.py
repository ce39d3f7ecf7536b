"""The model runtime the tasks and the service share: a base model, named LoRA adapters on it,
and batched text generation that stops where the ReAct format says a tool must run.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)

from evolora.logs import get_logger

log = get_logger(__name__)

BASE_ADAPTER = "base"
MIN_SAMPLING_TEMPERATURE = 1e-2


class AdapterError(RuntimeError):
    """An adapter that cannot be attached or selected; the message says why."""


def pick_device() -> str:
    """`cuda` where a GPU is usable, else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, left-padded for batched generation."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX. Elsewhere torch emulates bf16, and slowly: on an AVX2-only CPU (AMD
    EPYC) a LoRA layer's forward and backward under bf16 autocast took 47x as long as in
    float32, and a bf16 linear ran at a quarter of float32's speed."""
    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def runtime_dtype(dtype: str, device: str) -> str:
    """The dtype to compute in: `dtype`, except bfloat16 where `device` has no native bf16
    (then float32, see `native_bf16`)."""
    if dtype == "bfloat16" and not native_bf16(device):
        return "float32"
    return dtype


def inference_quantization(train_quantization: str, device: str) -> str:
    """How evaluation and serving load the base: as training did on CUDA (NF4 for `auto` and
    `nf4`, 8-bit for `int8`), so a base that only fits the card in 4-bit is scored and
    served on it too; unquantised on a CPU (4-bit kernels there are slower than float32)."""
    if device != "cuda":
        return "none"
    return "nf4" if train_quantization == "auto" else train_quantization


def load_base_model(model_path: str, dtype: str = "bfloat16", device: str | None = None,
                    quantization: str = "none") -> Any:
    """The base causal LM in eval mode on `device` (default: CUDA if present), in `dtype`
    where the device computes it natively (`runtime_dtype`); `nf4` or `int8` loads its
    linear layers quantised by bitsandbytes (the rest in `dtype`)."""
    device = device or pick_device()
    dtype = runtime_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if quantization in ("nf4", "int8"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=kwargs["dtype"])
            if quantization == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
        if device == "cuda":
            kwargs["device_map"] = {"": 0}
        # A quantised model is placed at load time; `.to()` is refused for it.
        return AutoModelForCausalLM.from_pretrained(model_path, **kwargs).eval()
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    return model.to(device).eval()


class EngineOutOfMemory(RuntimeError):
    """A generation ran out of GPU memory; the engine freed what it held and goes on
    (on the CPU after `oom_fallback_after` in a row)."""


def free_gpu_memory() -> None:
    """Collect what dropped references held and return the allocator's cache to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ChatText:
    """The text side both engines share: the base's chat template and its token counts
    (llama.cpp is sent the same tokenizer's ids, so the counts hold for it too)."""

    tokenizer: PreTrainedTokenizerBase

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        """The model's chat template for `messages`, opened for an assistant reply."""
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=True)
        return str(prompt) + assistant_prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class ModelRuntime(ChatText):
    """A base model with any number of named adapters, one of them active at a time.

    PEFT keeps every attached adapter in the module tree; switching is a pointer change,
    so an adapter swap costs microseconds once the weights are loaded. `lock` serialises
    generation and switching: callers that generate hold it for a whole request.
    """

    model: Any
    tokenizer: PreTrainedTokenizerBase
    model_path: str
    active: str = BASE_ADAPTER
    adapters: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    dtype: str = "bfloat16"
    device: str = "cpu"
    quantization: str = "none"
    # Out of GPU memory: free and answer EngineOutOfMemory; after this many in a row, move
    # to the CPU. `fault_oom_calls` (fault injection) are generation numbers that raise it.
    oom_fallback_after: int = 3
    fault_oom_calls: frozenset[int] = frozenset()
    generations: int = 0
    consecutive_oom: int = 0
    cpu_fallbacks: int = 0
    # A reply not finished this many seconds after it was asked for (waiting for the lock
    # included) is stopped at its next token and raises GenerationTimeout
    # (serving.generation_timeout_s); None: no limit.
    generation_timeout_s: float | None = None

    @classmethod
    def load(cls, model_path: str, dtype: str = "bfloat16", device: str | None = None,
             quantization: str = "none", **policy: Any) -> ModelRuntime:
        """Load the base model and tokenizer from a folder (or hub id when online);
        `policy`: `oom_fallback_after`, `fault_oom_calls`, `generation_timeout_s`."""
        device = device or pick_device()
        return cls(load_base_model(model_path, dtype, device, quantization),
                   load_tokenizer(model_path), model_path, dtype=dtype, device=device,
                   quantization=quantization, **policy)

    engine_name = "transformers"

    def attach(self, name: str, adapter_dir: str | Path) -> float:
        """Load a PEFT adapter folder under `name` (replacing one of the same name).

        Returns the seconds generation was blocked: the time the model lock was held."""
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise AdapterError(f"{adapter_dir} is not a PEFT adapter folder "
                               "(no adapter_config.json)")
        if name == BASE_ADAPTER:
            raise AdapterError(f"{BASE_ADAPTER!r} names the bare base model; pick another name")
        with self.lock:
            held_from = time.perf_counter()
            if name in self.adapters:
                self.detach(name)
            if not self.adapters and not hasattr(self.model, "peft_config"):
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir),
                                                       adapter_name=name, is_trainable=False)
            else:
                self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
            self.model.eval()
            self.adapters[name] = str(adapter_dir)
            log.info("adapter.attached", name=name, path=str(adapter_dir))
            return time.perf_counter() - held_from

    def use(self, name: str) -> None:
        """Make `name` the active adapter (`base` for the bare base model)."""
        with self.lock:
            if name != BASE_ADAPTER and name not in self.adapters:
                raise AdapterError(f"no adapter named {name!r}; attached: "
                                   f"{', '.join(self.adapters) or 'none'}")
            if name != BASE_ADAPTER:
                self.model.set_adapter(name)
            self.active = name

    def detach(self, name: str) -> None:
        """Unload an adapter's weights; the base model becomes active if it was."""
        with self.lock:
            if name not in self.adapters:
                raise AdapterError(f"no adapter named {name!r}")
            if len(self.adapters) == 1:
                # The last one: unwrap to the bare base model (PEFT cannot run empty).
                self.model = self.model.unload()
            else:
                self.model.delete_adapter(name)
            del self.adapters[name]
            if self.active == name:
                self.active = BASE_ADAPTER

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, adapter: str | None = None) -> list[str]:
        """Continue each prompt (batched, left-padded); each reply is cut at its first stop.

        `adapter` makes that adapter active first (under the lock); None keeps the active one.
        Past `generation_timeout_s` it raises GenerationTimeout.
        """
        from transformers import StoppingCriteriaList

        deadline = self._deadline()
        with self._locked(deadline), torch.inference_mode():
            if adapter is not None:
                self.use(adapter)
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.model.device)
            kwargs = self._generation_kwargs(max_new_tokens, stop, temperature, top_p)
            if deadline is not None:
                kwargs["stopping_criteria"] = StoppingCriteriaList([deadline])
            with self._out_of_memory_guard():
                if self.active == BASE_ADAPTER and self.adapters:
                    with self.model.disable_adapter():
                        output = self.model.generate(**batch, **kwargs)
                else:
                    output = self.model.generate(**batch, **kwargs)
            if deadline is not None and deadline.fired:
                raise self._timed_out()
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [cut_at_stop(text, stop or []) for text in texts]

    def _deadline(self) -> _Deadline | None:
        if self.generation_timeout_s is None:
            return None
        return _Deadline(time.monotonic() + self.generation_timeout_s)

    @contextmanager
    def _locked(self, deadline: _Deadline | None) -> Iterator[None]:
        """The model lock, waited for no longer than `deadline` allows."""
        wait = -1.0 if deadline is None else max(0.0, deadline.at - time.monotonic())
        if not self.lock.acquire(timeout=wait):
            raise self._timed_out()
        try:
            yield
        finally:
            self.lock.release()

    def _timed_out(self) -> Exception:
        # engines.engine imports this module: its error is imported when first needed.
        from engines.engine import GenerationTimeout

        log.warning("engine.generation_timeout", engine=self.engine_name,
                    limit_s=self.generation_timeout_s)
        return GenerationTimeout(f"the generation ran past {self.generation_timeout_s:g} s "
                                 "(serving.generation_timeout_s) and was cancelled")

    def stream(self, prompt: str, *, adapter: str, max_new_tokens: int = 96,
               stop: list[str] | None = None, temperature: float = 0.0, top_p: float = 1.0
               ) -> Generator[str, None, None]:
        """Yield the reply to `prompt` piece by piece as `adapter` generates it.

        Generation runs in a thread holding the model lock (with `adapter` active) from the
        first token to the last; text that could be the start of a stop sequence is held
        back until it is clear, so no stop sequence is ever emitted. Closing the generator
        early (the reader left) stops generation at the next token and frees the lock; so
        does `generation_timeout_s`, and the reader gets GenerationTimeout.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True, timeout=600)
        cancelled = threading.Event()
        failure: list[BaseException] = []
        deadline = self._deadline()
        criteria = [_Cancelled(cancelled), *([deadline] if deadline is not None else [])]

        def run() -> None:
            try:
                with self._locked(deadline):
                    self.use(adapter)
                    self._generate_raw(prompt, max_new_tokens, stop, temperature, top_p,
                                       streamer, StoppingCriteriaList(criteria))
                if deadline is not None and deadline.fired:
                    raise self._timed_out()
            except BaseException as exc:  # surfaced to the reader below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="evolora-stream", daemon=True)
        worker.start()
        stops = stop or []
        hold = max((len(s) for s in stops), default=0)
        text, sent = "", 0
        try:
            for piece in streamer:
                text += piece
                cut = cut_at_stop(text, stops)
                if len(cut) < len(text):  # a stop sequence appeared: end here
                    text = cut
                    break
                safe = len(text) - hold
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
        finally:
            # After a stop sequence, or when the reader closed us: no token more is wanted.
            cancelled.set()
            worker.join()
        if failure:
            raise failure[0]
        if len(text) > sent:
            yield text[sent:]

    def _generate_raw(self, prompt: str, max_new_tokens: int, stop: list[str] | None,
                      temperature: float, top_p: float, streamer: Any,
                      stopping_criteria: Any = None) -> None:
        with torch.inference_mode():
            batch = self.tokenizer([prompt], return_tensors="pt",
                                   add_special_tokens=False).to(self.model.device)
            kwargs = self._generation_kwargs(max_new_tokens, stop, temperature, top_p)
            kwargs["streamer"] = streamer
            if stopping_criteria is not None:
                kwargs["stopping_criteria"] = stopping_criteria
            with self._out_of_memory_guard():
                if self.active == BASE_ADAPTER and self.adapters:
                    with self.model.disable_adapter():
                        self.model.generate(**batch, **kwargs)
                else:
                    self.model.generate(**batch, **kwargs)

    def _generation_kwargs(self, max_new_tokens: int, stop: list[str] | None,
                           temperature: float, top_p: float) -> dict[str, Any]:
        # A temperature near 0 divides the logits into inf/nan; it means greedy anyway.
        sampling = temperature >= MIN_SAMPLING_TEMPERATURE
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sampling,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if sampling:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        return kwargs

    @contextmanager
    def _out_of_memory_guard(self) -> Iterator[None]:
        """Around one generation (the lock held): an out-of-memory error frees the GPU and
        becomes EngineOutOfMemory; `oom_fallback_after` of them in a row move to the CPU."""
        self.generations += 1
        error = ""
        try:
            if self.generations in self.fault_oom_calls:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (injected by serving.fault_oom_requests at "
                    f"generation {self.generations})")
            yield
        except torch.cuda.OutOfMemoryError as exc:
            error = str(exc).splitlines()[0]  # the generation's frames go with `exc`
        if not error:
            self.consecutive_oom = 0
            return
        self.consecutive_oom += 1
        free_gpu_memory()
        log.warning("engine.out_of_memory", generation=self.generations, error=error,
                    consecutive=self.consecutive_oom, device=self.device)
        if self.consecutive_oom >= self.oom_fallback_after and self.can_fall_back:
            self.fall_back_to_cpu()
        raise EngineOutOfMemory(error)

    @property
    def can_fall_back(self) -> bool:
        """Whether a lighter CPU copy exists: the base is on a GPU, or quantised."""
        return self.device != "cpu" or self.quantization != "none"

    def fall_back_to_cpu(self) -> None:
        """Reload the base on the CPU, unquantised, with every adapter attached again (the
        active one stays active); the GPU copy is freed."""
        with self.lock:
            adapters, active = dict(self.adapters), self.active
            self.model = None
            free_gpu_memory()
            self.model = load_base_model(self.model_path, self.dtype, "cpu")
            self.device, self.quantization = "cpu", "none"
            self.adapters = {}
            for name, adapter_dir in adapters.items():
                self.attach(name, adapter_dir)
            self.use(active)
            self.consecutive_oom = 0
            self.cpu_fallbacks += 1
            log.warning("engine.cpu_fallback", model=self.model_path,
                        adapters=list(adapters), active=active)

    def close(self) -> None:
        """Drop the weights and give the GPU memory back (the evaluation's engine is closed
        before the next training needs the card)."""
        with self.lock:
            self.model = None
            free_gpu_memory()


class _Cancelled(StoppingCriteria):
    """A transformers stopping criterion: true for every row once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
                 ) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class _Deadline(StoppingCriteria):
    """A transformers stopping criterion: true for every row once the clock passes `at`
    (time.monotonic); `fired` tells the caller the reply was cut by it."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
                 ) -> torch.Tensor:
        self.fired = self.fired or time.monotonic() >= self.at
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool,
                          device=input_ids.device)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to (not including) the earliest stop sequence in it."""
    cut = len(text)
    for sequence in stop:
        index = text.find(sequence)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]
