"""Out of GPU memory while serving: 503 with Retry-After, the engine frees and goes on, and
repeated failures move it to the CPU.

The errors are injected (`serving.fault_oom_requests`): the transformers engine raises
`torch.cuda.OutOfMemoryError` inside its generation, and what follows (freeing, counting,
the fallback, the 503, the next request) is the real path. On this CPU-only machine the
service's engine is already on the CPU; the move itself is shown on an engine loaded in 4-bit
(bitsandbytes runs NF4 on a CPU), whose fallback is the same reload a CUDA engine makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bitsandbytes as bnb
import httpx
import pytest
from support.serving import save_tiny_adapter, serving_settings

from engines.transformers_runtime import EngineOutOfMemory, ModelRuntime, inference_quantization
from serving.app import create_app
from serving.local_server import running_server

FAILING = [1, 3, 4]  # generations that run out of memory


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    settings = serving_settings(tmp_path_factory.mktemp("serving-oom"), tiny_model_dir,
                                engine="transformers", fault_oom_requests=FAILING,
                                oom_retry_after_s=7, poll_interval_s=3600)
    with running_server(create_app(settings)) as base_url:
        yield base_url


def ask(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "base", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}]})


@pytest.mark.server
def test_a_request_out_of_memory_is_a_503_and_the_next_one_is_answered(url: str) -> None:
    statuses = []
    for _ in range(5):
        answer = ask(url)
        statuses.append(answer.status_code)
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] == "7"
            assert answer.json()["error"]["code"] == "out_of_memory"
            assert "retry" in answer.json()["detail"]
        else:
            assert answer.json()["choices"][0]["message"]["content"] is not None
    # Generations 1, 3 and 4 failed; 2 and 5 were answered on the same engine.
    assert statuses == [503, 200, 503, 503, 200]
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_repeated_out_of_memory_moves_the_engine_to_the_cpu(tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    adapter = save_tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    engine = ModelRuntime.load(str(tiny_model_dir), "float32", "cpu", "nf4",
                               oom_fallback_after=2, fault_oom_calls=frozenset({1, 3, 4}))
    engine.attach("v1", adapter)
    engine.use("v1")
    prompt = engine.chat_prompt([{"role": "user", "content": "hi"}])
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())

    with pytest.raises(EngineOutOfMemory, match="injected"):
        engine.generate([prompt], max_new_tokens=4)
    assert engine.quantization == "nf4"  # one failure: freed, not moved
    engine.generate([prompt], max_new_tokens=4)  # a success resets the count
    for _ in range(2):
        with pytest.raises(EngineOutOfMemory):
            engine.generate([prompt], max_new_tokens=4)
    # Two in a row: reloaded unquantised on the CPU, adapters attached again, v1 active.
    assert (engine.device, engine.quantization, engine.cpu_fallbacks) == ("cpu", "none", 1)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
    assert engine.adapters == {"v1": str(adapter)} and engine.active == "v1"
    reference = ModelRuntime.load(str(tiny_model_dir), "float32", "cpu")
    reference.attach("v1", adapter)
    assert engine.generate([prompt], max_new_tokens=6, adapter="v1") == reference.generate(
        [prompt], max_new_tokens=6, adapter="v1")
    assert not engine.can_fall_back  # nothing lighter is left
    engine.close()  # the evaluation's engine gives its memory back before the next training
    assert engine.model is None


def test_the_base_is_evaluated_and_served_as_it_was_trained_on_cuda() -> None:
    assert inference_quantization("auto", "cuda") == "nf4"  # auto trained NF4 QLoRA there
    assert inference_quantization("nf4", "cuda") == "nf4"
    assert inference_quantization("int8", "cuda") == "int8"
    assert inference_quantization("none", "cuda") == "none"
    assert inference_quantization("nf4", "cpu") == "none"  # 4-bit kernels are slow on a CPU
