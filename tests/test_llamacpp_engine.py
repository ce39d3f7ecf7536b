"""The llama.cpp engine against the transformers reference, on the tiny model and its GGUF.

The tiny GGUF is the tiny model's own float32 weights (tests/support/tiny_gguf.py), so the
two engines compute the same function: greedy text must agree token for token, with the
base model and with adapters converted by engines/gguf_lora.py. A converter that dropped
the q/k permutation, the scaling or a module would change the text.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
import torch

from agent.react_format import STOP_SEQUENCE, build_messages
from engines.engine import AdapterView, EngineError, base_gguf_path
from engines.gguf_lora import (
    AdapterConversionError,
    checksum_path,
    convert_adapter,
    verify_checksum,
)
from engines.llama_server import port_is_open
from engines.llamacpp_engine import LlamaCppEngine, _event_lines
from engines.transformers_runtime import AdapterError, ModelRuntime
from evolora.settings import Settings
from tests.support.adapters import make_adapter

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUESTIONS = ["What is 17 times 23?", "Convert 3 km to m.", "hello", "Which day is 2024-03-01?"]


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    llama = LlamaCppEngine(tiny_model_dir / "model.gguf", tiny_model_dir,
                           work_dir=tmp_path_factory.mktemp("engine"), slots=4)
    reference = ModelRuntime.load(str(tiny_model_dir), "float32")
    yield llama, reference
    llama.close()


def strong_adapter(base_dir: Path, out: Path, seed: int, **config: object) -> Path:
    """A real PEFT adapter with PEFT's fully random init: strong enough to change the text."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ALL_PROJECTIONS, **config}
    get_peft_model(model, LoraConfig(init_lora_weights=False, **settings)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_all(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return strong_adapter(tiny_model_dir, tmp_path_factory.mktemp("a") / "all", seed=11)


def _prompts(engine: LlamaCppEngine) -> list[str]:
    return [engine.chat_prompt(build_messages(q)) for q in QUESTIONS]


def test_base_and_adapter_text_match_the_transformers_reference(engines, adapter_all) -> None:
    llama, reference = engines
    prompts = _prompts(llama)
    assert llama.generate(prompts, max_new_tokens=16) == reference.generate(
        prompts, max_new_tokens=16, adapter="base")
    llama.attach("all", adapter_all)
    reference.attach("all", adapter_all)
    adapted = llama.generate(prompts, max_new_tokens=16, adapter="all")
    assert adapted == reference.generate(prompts, max_new_tokens=16, adapter="all")
    # The adapter is really applied, and only when asked for by name.
    assert adapted != llama.generate(prompts, max_new_tokens=16, adapter="base")


def test_unequal_ranks_and_rslora_convert_exactly(engines, tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    llama, reference = engines
    strong_adapter(tiny_model_dir, tmp_path / "mixed", seed=5, use_rslora=True,
                   rank_pattern={"k_proj": 2, "down_proj": 8}, alpha_pattern={"down_proj": 3})
    llama.attach("mixed", tmp_path / "mixed")
    reference.attach("mixed", tmp_path / "mixed")
    prompts = _prompts(llama)
    assert llama.generate(prompts, max_new_tokens=16, adapter="mixed") == reference.generate(
        prompts, max_new_tokens=16, adapter="mixed")


def test_first_react_steps_agree_on_real_problems_with_a_trained_adapter(
        engines, tiny_settings: Settings) -> None:
    from evolora.tracking import setup_mlflow
    from tasks.data import build_splits
    from tasks.train.trainer import train_adapter

    llama, reference = engines
    bundle = build_splits(tiny_settings.data, tiny_settings.paths.data_dir)
    setup_mlflow(tiny_settings)
    trained = train_adapter(tiny_settings, tiny_settings.model.base, bundle.train,
                            tiny_settings.paths.data_dir / "adapters", "trained").adapter_dir
    llama.attach("trained", trained)
    reference.attach("trained", trained)
    prompts = [llama.chat_prompt(build_messages(row["question"])) for row in bundle.test]
    ours = llama.generate(prompts, max_new_tokens=24, stop=[STOP_SEQUENCE], adapter="trained")
    theirs = reference.generate(prompts, max_new_tokens=24, stop=[STOP_SEQUENCE],
                                adapter="trained")
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert len(prompts) >= 10 and same / len(prompts) >= 0.95, (same, len(prompts))


def test_concurrent_requests_batch_and_give_the_sequential_answers(engines) -> None:
    llama, _ = engines
    prompts = _prompts(llama) * 2
    one_by_one = [llama.generate([p], max_new_tokens=12)[0] for p in prompts]
    results: dict[int, str] = {}

    def ask(index: int) -> None:
        results[index] = llama.generate([prompts[index]], max_new_tokens=12)[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(prompts))] == one_by_one
    assert llama.generate(prompts, max_new_tokens=12) == one_by_one


def test_stream_yields_the_generated_text_and_never_a_stop_string(engines) -> None:
    llama, _ = engines
    prompt = _prompts(llama)[0]
    full = llama.generate([prompt], max_new_tokens=20)[0]
    assert "".join(llama.stream(prompt, adapter="base", max_new_tokens=20)) == full
    stop = full[5:9]
    streamed = "".join(llama.stream(prompt, adapter="base", max_new_tokens=20, stop=[stop]))
    assert stop not in streamed and full.startswith(streamed)


def test_attach_is_blue_green_an_in_flight_stream_finishes_on_the_old_instance(
        engines, adapter_all: Path) -> None:
    llama, _ = engines
    old = llama._current
    prompt = _prompts(llama)[0]
    pieces = llama.stream(prompt, adapter="base", max_new_tokens=40)
    first = next(pieces)  # the stream holds a lease on the old instance
    blocked = llama.attach("again", adapter_all)
    assert blocked < 0.05  # only the pointer move blocks new requests
    assert llama._current is not old and "again" in llama.adapters
    assert port_is_open(old.server.host, old.server.port)  # kept for the stream
    rest = "".join(pieces)
    assert first + rest  # the stream finished
    assert not port_is_open(old.server.host, old.server.port)  # closed with its last lease
    with pytest.raises(AdapterError, match="no adapter named 'gone'"):
        llama.generate([prompt], adapter="gone")
    llama.detach("again")
    assert "again" not in llama.adapters


def test_converter_writes_atomically_with_a_checksum_and_the_engine_reuses_it(
        tiny_model_dir: Path, adapter_all: Path, tmp_path: Path) -> None:
    out = convert_adapter(adapter_all, tiny_model_dir / "model.gguf", tmp_path / "a.gguf")
    assert verify_checksum(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "a.gguf.sha256"]
    header = out.read_bytes()[:4]
    assert header == b"GGUF"
    with out.open("r+b") as handle:  # one flipped byte: the checksum no longer matches
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    assert not verify_checksum(out)
    assert checksum_path(out).read_text().split()[1] == "a.gguf"


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "lm_head"]}, "embedding or output layer"),
])
def test_unsupported_adapters_are_refused_and_leave_no_file(
        tiny_model_dir: Path, tmp_path: Path, change: dict, message: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    for key, value in change.items():
        setattr(config, key, value)
    get_peft_model(model, config).save_pretrained(tmp_path / "bad")
    out_dir = tmp_path / "out"
    with pytest.raises(AdapterConversionError, match=message):
        convert_adapter(tmp_path / "bad", tiny_model_dir / "model.gguf", out_dir / "bad.gguf")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_an_adapter_of_another_base_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    other = tmp_path / "other-base"
    other.mkdir()
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = {**config, "hidden_size": 32, "intermediate_size": 64}
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in wider.items()
                                    if k not in ("architectures", "transformers_version")})
                     ).save_pretrained(other)
    adapter = make_adapter(other, tmp_path / "foreign", rank=2, targets=["q_proj"], seed=1)
    with pytest.raises(AdapterConversionError, match="different base model"):
        convert_adapter(adapter, tiny_model_dir / "model.gguf", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_base_gguf_resolution_and_its_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert base_gguf_path(tiny_model_dir) == tiny_model_dir / "model.gguf"
    with pytest.raises(EngineError, match=r"set model\.gguf"):
        base_gguf_path(tmp_path)
    with pytest.raises(EngineError, match="does not exist"):
        base_gguf_path(tiny_model_dir, tmp_path / "missing.gguf")


def test_adapter_view_is_what_the_react_loop_runs(engines) -> None:
    from agent.loop import run_agent_batch
    from agent.tools import default_tools

    llama, reference = engines
    runs = run_agent_batch(AdapterView(llama, "all"), QUESTIONS[:2], default_tools(),
                           max_steps=1, max_new_tokens=12)
    expected = run_agent_batch(AdapterView(reference, "all"), QUESTIONS[:2], default_tools(),
                               max_steps=1, max_new_tokens=12)
    assert [r.transcript for r in runs] == [r.transcript for r in expected]


def test_models_gguf_writes_the_trained_base_for_exact_parity(
        tiny_settings: Settings, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from typer.testing import CliRunner

    from cli.main import app

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    monkeypatch.setenv("EVOLORA_MODEL__BASE", str(base))
    result = CliRunner().invoke(app, ["models", "gguf", "-c", "tiny", "--dtype", "float16",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    written = Path(report["path"])
    assert written == base / "model-float16.gguf" and report["dtype"] == "float16"
    assert Path(report["tokenizer_from"]) == base / "model.gguf"
    assert [p.name for p in base.glob(".model-*")] == []  # no temporary file left
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(str(written)).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    # The engine runs it; the folder's own model.gguf stays the default.
    assert base_gguf_path(base) == base / "model.gguf"
    engine = LlamaCppEngine(written, base, work_dir=tmp_path / "work", slots=1)
    try:
        assert isinstance(engine.generate(["hello"], max_new_tokens=4)[0], str)
    finally:
        engine.close()

    (base / "config.json").write_text(json.dumps(
        {**json.loads((base / "config.json").read_text()), "model_type": "gemma3"}))
    refused = CliRunner().invoke(app, ["models", "gguf", "-c", "tiny"])
    assert refused.exit_code == 2 and "only Llama-architecture" in refused.output



def test_event_lines_split_at_line_feeds_only() -> None:

    # A generated string holds U+2028, U+0085 and \x1c unescaped in llama.cpp's JSON; a
    # chunk boundary may fall inside a character. Each event is one line, parsed whole.
    events = [{"content": "a\u2028b\x85c\x1cd", "stop": False}, {"content": "", "stop": True}]
    raw = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events).encode()
    chunks = [raw[:9], raw[9:10], raw[10:]]
    response = httpx.Response(200, content=iter(chunks))
    lines = [line for line in _event_lines(response) if line]
    assert [json.loads(line[len("data: "):]) for line in lines] == events
