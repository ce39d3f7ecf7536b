"""One chat completion on the serving engine: prompt, generation on the leased adapter, usage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from engines.engine import InferenceEngine
from serving.hot_loader import AdapterHotLoader
from serving.metrics import ServingMetrics
from serving.schemas import ChatMessage

# Roles the chat template knows; the others are mapped onto them.
_ROLE_MAP = {"developer": "system", "tool": "user"}


@dataclass
class Completion:
    """A generated reply with the adapter that produced it and its token counts."""

    text: str
    adapter: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str


def chat_prompt(runtime: InferenceEngine, messages: list[ChatMessage]) -> str:
    """The chat-template prompt for OpenAI-style messages."""
    chat = [{"role": _ROLE_MAP.get(m.role, m.role), "content": m.text()} for m in messages]
    return runtime.chat_prompt(chat)


def count_tokens(runtime: InferenceEngine, text: str) -> int:
    return runtime.count_tokens(text)


def complete(runtime: InferenceEngine, loader: AdapterHotLoader, metrics: ServingMetrics, *,
             model: str | None, messages: list[ChatMessage], max_new_tokens: int,
             stop: list[str], temperature: float, top_p: float) -> Completion:
    """Generate a reply on the adapter `model` names, held from start to end of generation."""
    prompt = chat_prompt(runtime, messages)
    with loader.lease(model) as adapter:
        started = time.perf_counter()
        text = runtime.generate([prompt], max_new_tokens=max_new_tokens, stop=stop or None,
                                temperature=temperature, top_p=top_p, adapter=adapter)[0]
        seconds = time.perf_counter() - started
    completion_tokens = count_tokens(runtime, text)
    metrics.record_generation(adapter, completion_tokens, seconds)
    finish = "length" if completion_tokens >= max_new_tokens else "stop"
    return Completion(text, adapter, count_tokens(runtime, prompt), completion_tokens, seconds,
                      finish)


def stream_completion(runtime: InferenceEngine, loader: AdapterHotLoader, metrics: ServingMetrics,
                      *, adapter: str, prompt: str, max_new_tokens: int, stop: list[str],
                      temperature: float, top_p: float, done: Completion) -> Iterator[str]:
    """Yield the reply's pieces live; fills `done` (tokens, finish) when generation ends."""
    started = time.perf_counter()
    text = ""
    for piece in runtime.stream(prompt, adapter=adapter, max_new_tokens=max_new_tokens,
                                stop=stop or None, temperature=temperature, top_p=top_p):
        text += piece
        yield piece
    done.seconds = time.perf_counter() - started
    done.text = text
    done.completion_tokens = count_tokens(runtime, text)
    done.finish_reason = "length" if done.completion_tokens >= max_new_tokens else "stop"
    metrics.record_generation(adapter, done.completion_tokens, done.seconds)
