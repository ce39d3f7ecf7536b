"""The embedded llama.cpp server: real model, real HTTP, and a port that is free after stop()."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engines.llama_server import (
    EmbeddedLlamaServer,
    LlamaServerError,
    default_gguf_path,
    port_is_open,
)

# One thread: on 2 shared cores, two spinning llama.cpp threads collapse when other work runs.
LLAMA_THREADS = 1


@pytest.fixture(scope="module")
def llama() -> Iterator[EmbeddedLlamaServer]:
    with EmbeddedLlamaServer(default_gguf_path(), n_threads=LLAMA_THREADS, ctx_size=1024) as server:
        yield server


@pytest.mark.server
def test_serves_openai_chat_on_loopback(llama: EmbeddedLlamaServer) -> None:
    assert llama.base_url.startswith("http://127.0.0.1:")
    assert llama.startup_s is not None and llama.startup_s < 30
    models = httpx.get(f"{llama.base_url}/models", timeout=5).json()
    assert llama.model_name in {m["id"] for m in models["data"]}

    client = openai.OpenAI(base_url=llama.base_url, api_key="none", timeout=60)
    reply = client.chat.completions.create(
        model=llama.model_name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert len(text.strip()) > 0
    assert any(ch.isalpha() for ch in text)  # words, not an empty or byte-garbage reply


@pytest.mark.server
def test_stop_frees_the_port_and_restarts() -> None:
    server = EmbeddedLlamaServer(default_gguf_path(), n_threads=1, ctx_size=256)
    server.start()
    port = server.port
    assert port is not None and port_is_open("127.0.0.1", port)
    assert server.start() is server  # a second start is a no-op
    server.stop()
    assert not server.running
    assert not port_is_open("127.0.0.1", port)
    # The port can be bound again at once: nothing of ours holds it.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    server.stop()  # idempotent
    with server:
        assert httpx.get(f"{server.root_url}/health", timeout=5).status_code == 200
    assert not server.running


@pytest.mark.server
def test_a_bad_model_raises_clearly_and_leaves_nothing_running(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    server = EmbeddedLlamaServer(bad, n_threads=1)
    with pytest.raises(LlamaServerError, match="could not start"):
        server.start()
    assert not server.running

    with pytest.raises(LlamaServerError, match="not found"):
        EmbeddedLlamaServer(tmp_path / "missing.gguf").start()


@pytest.mark.server
def test_a_busy_port_is_refused(llama: EmbeddedLlamaServer) -> None:
    with pytest.raises(LlamaServerError, match="already in use"):
        EmbeddedLlamaServer(default_gguf_path(), port=llama.port).start()
