"""The teacher against real servers: llama.cpp behind the OpenAI API and the Ollama API.

No mocks: the Ollama code path goes through `tests/support/ollama_proxy.py`, a loopback
server speaking the Ollama HTTP API and answered by the real SmolLM2 GGUF.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs
from support.loopback import free_port
from support.ollama_proxy import OllamaProxy

from engines.llama_server import EmbeddedLlamaServer, default_gguf_path
from evolora.settings import TeacherBackend, TeacherSettings
from tasks.data.teacher import Teacher, TeacherUnavailable, paraphraser_or_none
from tasks.data.teacher_replies import clean_paraphrase, strip_thinking

R1 = "deepseek-r1:7b"
QWEN = "qwen2.5:7b-instruct"
SECRET = "sk-test-DO-NOT-LOG-7f3a9c"
MASK = "***"
# One thread: on 2 shared cores, two spinning llama.cpp threads collapse when other work runs
# (measured 19 tok/s with 2 threads against 77 with 1 while other jobs were busy).
LLAMA_THREADS = 1


@pytest.fixture(scope="module")
def llama() -> Iterator[EmbeddedLlamaServer]:
    """The one real model every test in this module talks to."""
    with EmbeddedLlamaServer(default_gguf_path(), n_threads=LLAMA_THREADS, ctx_size=1024) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(llama: EmbeddedLlamaServer) -> Iterator[OllamaProxy]:
    with OllamaProxy(llama, models=[QWEN, "smollm2:135m"]) as running:
        yield running


def ollama_backend(url: str, models: list[str], **extra: Any) -> TeacherBackend:
    return TeacherBackend(kind="ollama", url=url, models=models, **extra)


def teacher_of(*backends: TeacherBackend) -> Teacher:
    return Teacher(TeacherSettings(backends=list(backends), temperature=0))


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # free right now: nothing listens there


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- pure functions ----------------------------------------------------------------------------


def test_strip_thinking_removes_r1_blocks() -> None:
    assert strip_thinking("<think>\nlet me see\n\n12+30</think>\n\n42") == "42"
    assert strip_thinking("<think>cut off mid thought") == ""
    assert strip_thinking("plain") == "plain"


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n ",
        "What is 12 plus 30?\n\nI reworded the question by changing the verb.",
        "Here is the question: " + "very " * 60 + "long 12 30",
        "Reword this question. Keep every number: What is 12 plus 30?",
        "What is 12 + 30?",  # identical to the original
        "What is 13 plus 30?",  # a number changed: the checked answer would be wrong
        "12 + 30 is 42.",  # answered instead of reworded
        "What is 12 plus 30? It is 42?",
    ],
)
def test_clean_paraphrase_rejects_garbage(reply: str) -> None:
    assert clean_paraphrase("What is 12 + 30?", reply) is None


def test_clean_paraphrase_keeps_a_good_rewording() -> None:
    got = clean_paraphrase("What is 12 + 30?", 'Reworded question: "How much is 12 plus 30?"')
    assert got == "How much is 12 plus 30?"


# -- the Ollama API proxy itself ---------------------------------------------------------------


@pytest.mark.server
def test_ollama_client_through_the_proxy(proxy: OllamaProxy) -> None:
    client = ollama.Client(host=proxy.url, timeout=60)
    assert {m.model for m in client.list().models} == {QWEN, "smollm2:135m"}
    assert httpx.get(f"{proxy.url}/api/version", timeout=5).json()["version"]

    messages = [{"role": "user", "content": "Name a colour."}]
    options = {"temperature": 0, "num_predict": 12}
    whole = client.chat(model=QWEN, messages=messages, options=options)
    assert whole.done and whole.message.content.strip()

    parts = list(client.chat(model=QWEN, messages=messages, options=options, stream=True))
    assert parts[-1].done and len(parts) > 2  # NDJSON: one line per token, then the final one
    streamed = "".join(p.message.content or "" for p in parts)
    assert streamed.strip() == whole.message.content.strip()  # same model, temperature 0

    generated = client.generate(model=QWEN, prompt="The sky is", options=options)
    assert generated.done and generated.response.strip()
    pieces = list(client.generate(model=QWEN, prompt="The sky is", options=options, stream=True))
    assert pieces[-1].done and "".join(p.response for p in pieces).strip()

    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope:1b", messages=messages)
    assert missing.value.status_code == 404
    assert missing.value.error == "model 'nope:1b' not found"


# -- fallback ----------------------------------------------------------------------------------


@pytest.mark.server
def test_missing_model_falls_back_to_the_next_model(proxy: OllamaProxy) -> None:
    teacher = teacher_of(ollama_backend(proxy.url, [R1, QWEN]))
    with capture_logs() as logs:
        text = teacher.complete("Say hello.", max_tokens=8)
    assert text
    assert teacher.used == f"ollama:{QWEN}"
    fallback = events(logs, "teacher.fallback")
    assert len(fallback) == 1 and fallback[0]["model"] == R1
    assert "not found" in fallback[0]["reason"]

    statuses = teacher.health()
    assert [(s.model, s.ok) for s in statuses] == [(R1, False), (QWEN, True)]
    assert "ollama pull" in statuses[0].detail


@pytest.mark.server
def test_unreachable_backend_falls_back_to_the_next_backend(llama: EmbeddedLlamaServer) -> None:
    dead = ollama_backend(closed_url(), [R1, QWEN], retries=1)
    live = TeacherBackend(kind="openai", url=llama.base_url, models=[llama.model_name])
    teacher = teacher_of(dead, live)
    with capture_logs() as logs:
        assert teacher.complete("Say hello.", max_tokens=8)
    assert teacher.used == f"openai:{llama.model_name}"
    fallback = events(logs, "teacher.fallback")
    # One line for the dead backend as a whole: its second model is not tried.
    assert len(fallback) == 1 and fallback[0]["next"] == "next backend"
    assert "unreachable" in fallback[0]["reason"]
    assert len(events(logs, "teacher.retry")) == 1  # retries=1

    statuses = teacher.health()
    assert statuses[0].ok is False and statuses[0].model is None
    assert statuses[-1].ok is True

    # The next call skips the dead backend for a while instead of failing on it again.
    with capture_logs() as logs:
        assert teacher.complete("Say hi.", max_tokens=8)
    assert not events(logs, "teacher.fallback") and not events(logs, "teacher.retry")
    assert events(logs, "teacher.skip")


@pytest.mark.server
def test_slow_backend_times_out_and_falls_back(
    llama: EmbeddedLlamaServer, proxy: OllamaProxy
) -> None:
    with OllamaProxy(llama, models=[QWEN], mode="slow", delay_s=60) as slow:
        teacher = teacher_of(
            ollama_backend(slow.url, [QWEN], timeout_s=0.5, retries=1),
            ollama_backend(proxy.url, ["smollm2:135m"]),
        )
        started = time.perf_counter()
        with capture_logs() as logs:
            assert teacher.complete("Say hello.", max_tokens=8)
        # Two 0.5 s tries, then the fallback's answer: far less than one 60 s sleep, even on
        # a busy machine.
        assert time.perf_counter() - started < 30
    assert teacher.used == "ollama:smollm2:135m"
    assert len(events(logs, "teacher.retry")) == 1
    (fallback,) = events(logs, "teacher.fallback")
    assert "Timeout" in fallback["reason"]


@pytest.mark.server
def test_no_teacher_reachable() -> None:
    teacher = teacher_of(
        ollama_backend(closed_url(), [R1], retries=0),
        TeacherBackend(kind="openai", url=closed_url() + "/v1", models=["gpt-x"], retries=0),
    )
    with capture_logs() as logs:
        assert paraphraser_or_none(teacher) is None
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "no teacher reachable" in warnings[0]["message"]
    assert "template wording" in warnings[0]["message"]

    with pytest.raises(TeacherUnavailable, match="no teacher answered"):
        teacher.complete("Say hello.")
    assert teacher.paraphrase("What is 2 + 2?") is None
    assert teacher.used is None


@pytest.mark.server
def test_paraphraser_is_returned_when_a_teacher_is_reachable(proxy: OllamaProxy) -> None:
    teacher = teacher_of(ollama_backend(proxy.url, [QWEN]))
    assert paraphraser_or_none(teacher) == teacher.paraphrase


# -- replies -----------------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Sure! Here is the reworded question.\n\nHow much is 12 plus 30?\n\nHope this helps!",
        "Please reword the question and keep every number the same.",
        "I " + "really " * 80 + "cannot do that.",
    ],
)
def test_garbage_replies_make_paraphrase_none(llama: EmbeddedLlamaServer, reply: str) -> None:
    with OllamaProxy(llama, models=[QWEN], mode="fixed", fixed_reply=reply) as garbage:
        teacher = teacher_of(ollama_backend(garbage.url, [QWEN], retries=0))
        assert teacher.paraphrase("What is 12 + 30?") is None


@pytest.mark.server
def test_thinking_is_stripped_from_r1_replies(llama: EmbeddedLlamaServer) -> None:
    reply = (
        "<think>\nThe user wants a rewording.\n\nKeep 12 and 30.\n</think>\n\n"
        "How much is 12 plus 30?"
    )
    with OllamaProxy(llama, models=[R1], mode="fixed", fixed_reply=reply) as r1:
        teacher = teacher_of(ollama_backend(r1.url, [R1]))
        assert teacher.paraphrase("What is 12 + 30?") == "How much is 12 plus 30?"
        assert teacher.used == f"ollama:{R1}"


@pytest.mark.server
def test_real_model_paraphrase_is_clean_or_none(proxy: OllamaProxy) -> None:
    teacher = teacher_of(ollama_backend(proxy.url, [QWEN]))
    question = "What is 15% of 240?"
    reworded = teacher.paraphrase(question)
    # A 135M model may well fail the checks; whatever comes back must be usable.
    assert reworded is None or ("15" in reworded and "240" in reworded and "\n" not in reworded)


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.server
def test_api_keys_never_reach_the_logs(llama: EmbeddedLlamaServer) -> None:
    with OllamaProxy(llama, models=[QWEN], mode="auth") as echoing:
        teacher = teacher_of(
            # This server quotes the Authorization header back in its error message.
            ollama_backend(echoing.url, [QWEN], api_key=SecretStr(SECRET), retries=1),
            TeacherBackend(
                kind="openai",
                url=closed_url() + "/v1",
                models=["m"],
                api_key=SecretStr(SECRET),
                retries=0,
            ),
            TeacherBackend(
                kind="openai",
                url=llama.base_url,
                models=[llama.model_name],
                api_key=SecretStr(SECRET),
            ),
        )
        with capture_logs() as logs:
            assert teacher.complete("Say hello.", max_tokens=8)
            statuses = teacher.health()
    assert teacher.used == f"openai:{llama.model_name}"
    assert len(events(logs, "teacher.fallback")) == 2
    refused = [e["reason"] for e in logs if "refused" in e.get("reason", "")]
    assert refused and f"Bearer {MASK}" in refused[0]  # the echoed key arrived, masked
    assert len(echoing.requests) == 1  # a rejected key is not retried
    assert SECRET not in repr(logs)
    assert SECRET not in repr(statuses)


# -- the embedded backend --------------------------------------------------------------------------


@pytest.mark.server
def test_embedded_backend_starts_lazily_and_stops() -> None:
    settings = TeacherSettings(backends=[TeacherBackend(kind="embedded")], temperature=0)
    with Teacher(settings, embedded_gguf=default_gguf_path(), embedded_threads=1) as teacher:
        assert teacher._embedded is None  # nothing started until it is needed
        assert teacher.complete("Say hello.", max_tokens=8)
        assert teacher.used == "embedded:smollm2"
        server = teacher.embedded_server()
        assert [s.ok for s in teacher.health()] == [True]
    assert not server.running
