"""One chat completion on the serving engine: prompt, generation on the leased adapter, usage."""

from __future__ import annotations

import time
from collections.abc import Generator
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


def complete(runtime: InferenceEngine, loader: AdapterHotLoader, metrics: ServingMetrics, *,
             model: str | None, prompt: str, prompt_tokens: int, max_new_tokens: int,
             stop: list[str], temperature: float, top_p: float) -> Completion:
    """Generate a reply to `prompt` on the adapter `model` names, held from start to end.

    The client leaving does not stop it: the work is bounded by `max_new_tokens` (at most
    `model.max_new_tokens`) instead."""
    with loader.lease(model) as adapter:
        started = time.perf_counter()
        text = runtime.generate([prompt], max_new_tokens=max_new_tokens, stop=stop or None,
                                temperature=temperature, top_p=top_p, adapter=adapter)[0]
        seconds = time.perf_counter() - started
    completion_tokens = runtime.count_tokens(text)
    metrics.record_generation(adapter, completion_tokens, seconds)
    finish = "length" if completion_tokens >= max_new_tokens else "stop"
    return Completion(text, adapter, prompt_tokens, completion_tokens, seconds, finish)


def stream_completion(runtime: InferenceEngine, loader: AdapterHotLoader, metrics: ServingMetrics,
                      *, adapter: str, prompt: str, max_new_tokens: int, stop: list[str],
                      temperature: float, top_p: float, done: Completion
                      ) -> Generator[str, None, None]:
    """Yield the reply's pieces live; fills `done` (text, tokens, finish) when generation
    ends, or when the reader closes this generator early (the client left): the engine's
    stream is closed then too, which stops its generation (llama.cpp frees the slot)."""
    started = time.perf_counter()
    text = ""
    pieces = runtime.stream(prompt, adapter=adapter, max_new_tokens=max_new_tokens,
                            stop=stop or None, temperature=temperature, top_p=top_p)
    try:
        for piece in pieces:
            text += piece
            yield piece
    finally:
        pieces.close()
        done.seconds = time.perf_counter() - started
        done.text = text
        done.completion_tokens = runtime.count_tokens(text)
        done.finish_reason = "length" if done.completion_tokens >= max_new_tokens else "stop"
        metrics.record_generation(adapter, done.completion_tokens, done.seconds)
