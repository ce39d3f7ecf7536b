"""The model runtime: adapters attached, switched and detached by name; live streaming."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from engines.transformers_runtime import BASE_ADAPTER, AdapterError, ModelRuntime


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> ModelRuntime:
    return ModelRuntime.load(str(tiny_model_dir), "float32", "cpu")


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op; a random B makes it change the output
            param.data.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def logits(runtime: ModelRuntime) -> torch.Tensor:
    ids = runtime.tokenizer("hello there", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return runtime.model(input_ids=ids).logits


def test_adapters_switch_by_name_and_base_is_untouched(runtime: ModelRuntime,
                                                       adapter_dir: Path) -> None:
    base = logits(runtime)
    runtime.attach("a", adapter_dir)
    runtime.use("a")
    assert not torch.allclose(logits(runtime), base)
    runtime.use(BASE_ADAPTER)
    prompt = runtime.chat_prompt([{"role": "user", "content": "hi"}])
    with_adapter_off = runtime.generate([prompt], max_new_tokens=5)
    runtime.detach("a")
    assert runtime.generate([prompt], max_new_tokens=5) == with_adapter_off
    assert runtime.active == BASE_ADAPTER and runtime.adapters == {}


def test_bad_adapter_names_and_folders_are_clear_errors(runtime: ModelRuntime,
                                                        tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        runtime.attach("x", tmp_path)
    with pytest.raises(AdapterError, match="no adapter named 'missing'"):
        runtime.use("missing")


@pytest.mark.parametrize("stop", [None, ["\n"], ["the"]])
def test_stream_yields_the_same_text_as_generate_and_never_a_stop(
    runtime: ModelRuntime, stop: list[str] | None
) -> None:
    prompt = runtime.chat_prompt([{"role": "user", "content": "Tell me a story."}])
    whole = runtime.generate([prompt], max_new_tokens=24, stop=stop)[0]
    pieces = list(runtime.stream(prompt, adapter=BASE_ADAPTER, max_new_tokens=24, stop=stop))
    assert "".join(pieces) == whole
    for sequence in stop or []:
        assert sequence not in "".join(pieces)


def test_closing_a_stream_stops_its_generation(runtime: ModelRuntime) -> None:
    prompt = runtime.chat_prompt([{"role": "user", "content": "Tell me a story."}])
    runtime.generate([prompt], max_new_tokens=2)  # warm up: the first call is slow
    started = time.perf_counter()
    whole = "".join(runtime.stream(prompt, adapter=BASE_ADAPTER, max_new_tokens=300))
    full_s = time.perf_counter() - started
    assert runtime.count_tokens(whole) > 200  # a long reply: one worth cutting short
    pieces = runtime.stream(prompt, adapter=BASE_ADAPTER, max_new_tokens=300)
    next(pieces)
    started = time.perf_counter()
    pieces.close()  # the reader left: generation stops at its next token, the lock is free
    assert time.perf_counter() - started < full_s / 3
    assert runtime.lock.acquire(blocking=False)
    runtime.lock.release()


def test_a_vanishing_temperature_is_greedy_not_a_crash(runtime: ModelRuntime) -> None:
    prompt = runtime.chat_prompt([{"role": "user", "content": "hi"}])
    greedy = runtime.generate([prompt], max_new_tokens=6)
    assert runtime.generate([prompt], max_new_tokens=6, temperature=1e-300) == greedy
    assert "".join(runtime.stream(prompt, adapter=BASE_ADAPTER, max_new_tokens=6,
                                  temperature=1e-300, top_p=1e-300)) == greedy[0]


def test_a_generation_past_its_time_limit_is_stopped_and_raises(
        runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.engine import GenerationTimeout

    prompt = runtime.chat_prompt([{"role": "user", "content": "Tell me a story."}])
    runtime.generate([prompt], max_new_tokens=2)  # warm up: the first call is slow
    started = time.perf_counter()
    runtime.generate([prompt], max_new_tokens=300)
    full_s = time.perf_counter() - started

    monkeypatch.setattr(runtime, "generation_timeout_s", full_s / 10)
    started = time.perf_counter()
    with pytest.raises(GenerationTimeout, match=r"serving\.generation_timeout_s"):
        runtime.generate([prompt], max_new_tokens=300)
    assert time.perf_counter() - started < full_s / 2  # stopped at a token, not at the end
    with pytest.raises(GenerationTimeout):
        "".join(runtime.stream(prompt, adapter=BASE_ADAPTER, max_new_tokens=300))
    assert runtime.lock.acquire(blocking=False)  # neither left the model locked
    runtime.lock.release()

    # Waiting for the model counts: a reply queued behind a busy model times out too.
    busy, done = threading.Event(), threading.Event()

    def hold_the_model() -> None:
        with runtime.lock:
            busy.set()
            done.wait(60)

    holder = threading.Thread(target=hold_the_model)
    holder.start()
    busy.wait(60)
    started = time.perf_counter()
    try:
        with pytest.raises(GenerationTimeout):
            runtime.generate([prompt], max_new_tokens=2)
        assert time.perf_counter() - started < full_s / 2
    finally:
        done.set()
        holder.join()
    monkeypatch.setattr(runtime, "generation_timeout_s", None)
    assert runtime.generate([prompt], max_new_tokens=300) != [""]  # no limit: a full reply
