"""A loopback server that speaks the Ollama HTTP API, backed by a real llama.cpp model.

The Ollama server itself cannot be installed here, so the `ollama` client code path is tested
against this: `/api/tags`, `/api/version`, `/api/chat` and `/api/generate` (NDJSON streaming,
Ollama's default, and `stream: false`), translated to and from the OpenAI endpoint of an
`EmbeddedLlamaServer`. Every listed model name is answered by that one GGUF; other names get
Ollama's 404. Modes make it misbehave on purpose:

- "normal": the model's real answer;
- "fixed": `fixed_reply` instead of the model (garbage, <think> blocks ...);
- "slow": sleep `delay_s` first (timeouts);
- "auth": reject every call with 401, quoting the Authorization header back (a server that
  echoes secrets, to check the client never logs them).

    with OllamaProxy(server, models=["qwen2.5:7b-instruct"]) as proxy:
        ollama.Client(host=proxy.url).chat(...)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from engines.llama_server import EmbeddedLlamaServer
from support.loopback import LoopbackServer

OLLAMA_VERSION = "0.6.0"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class OllamaProxy(LoopbackServer):
    """The Ollama API on 127.0.0.1:<free port>, answered by `upstream` (a context manager)."""

    thread_name = "ollama-proxy"

    def __init__(
        self,
        upstream: EmbeddedLlamaServer,
        *,
        models: list[str] | None = None,
        mode: str = "normal",
        fixed_reply: str = "",
        delay_s: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.models = list(models or ["smollm2:135m"])
        self.mode = mode
        self.fixed_reply = fixed_reply
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []  # every /api/chat and /api/generate body
        super().__init__(self._build_app())

    @property
    def url(self) -> str:
        return self.root_url

    # -- the API ---------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/version")
        async def version() -> dict[str, str]:
            return {"version": OLLAMA_VERSION}

        @app.get("/api/tags")
        async def tags() -> dict[str, Any]:
            return {"models": [self._model_entry(name) for name in self.models]}

        @app.post("/api/chat")
        async def chat(request: Request) -> Any:
            body = await request.json()
            messages = body.get("messages") or []
            return await self._answer(request, body, messages, chat=True)

        @app.post("/api/generate")
        async def generate(request: Request) -> Any:
            body = await request.json()
            messages = [{"role": "system", "content": body["system"]}] if body.get("system") else []
            messages.append({"role": "user", "content": body.get("prompt", "")})
            return await self._answer(request, body, messages, chat=False)

        return app

    def _model_entry(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": _now(),
            "size": self.upstream.gguf_path.stat().st_size,
            "digest": "0" * 64,
            "details": {
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "135M",
                "quantization_level": "Q4_1",
            },
        }

    async def _answer(
        self, request: Request, body: dict[str, Any], messages: list[dict[str, Any]], *, chat: bool
    ) -> Any:
        self.requests.append(body)
        if self.mode == "auth":
            header = request.headers.get("authorization", "(none)")
            return JSONResponse({"error": f"unauthorized: bad credentials {header}"}, 401)
        model = body.get("model", "")
        if model not in self.models:
            return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
        if self.mode == "slow":
            # In small steps, so that stop() is not held up by a sleeping request.
            until = time.monotonic() + self.delay_s
            while time.monotonic() < until and not self._stopping.is_set():
                await asyncio.sleep(0.05)
        options = body.get("options") or {}
        payload = {
            "model": self.upstream.model_name,
            "messages": [
                {"role": m.get("role", "user"), "content": m.get("content", "")} for m in messages
            ],
            "max_tokens": int(options.get("num_predict", 128)),
            "temperature": float(options.get("temperature", 0.8)),
        }
        stream = body.get("stream", True)  # Ollama streams unless told not to
        if stream:
            chunks = self._stream_chunks(payload)
            return StreamingResponse(
                self._ndjson(model, chunks, chat=chat), media_type="application/x-ndjson"
            )
        text, usage = await self._complete(payload)
        return {**self._piece(model, text, chat=chat), **self._final_fields(usage)}

    async def _complete(self, payload: dict[str, Any]) -> tuple[str, dict[str, int]]:
        if self.mode == "fixed":
            return self.fixed_reply, {}
        async with httpx.AsyncClient(timeout=120) as client:
            response = await client.post(f"{self.upstream.base_url}/chat/completions", json=payload)
            response.raise_for_status()
            data = response.json()
        return data["choices"][0]["message"]["content"] or "", data.get("usage", {})

    async def _stream_chunks(self, payload: dict[str, Any]) -> AsyncIterator[str]:
        if self.mode == "fixed":
            for word in self.fixed_reply.split(" "):
                yield word + " "
            return
        async with (
            httpx.AsyncClient(timeout=120) as client,
            client.stream(
                "POST",
                f"{self.upstream.base_url}/chat/completions",
                json={**payload, "stream": True},
            ) as response,
        ):
            response.raise_for_status()
            async for line in response.aiter_lines():  # server-sent events: "data: {...}"
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[len("data: ") :]).get("choices") or []
                delta = choices[0].get("delta", {}).get("content") if choices else None
                if delta:
                    yield delta

    async def _ndjson(
        self, model: str, chunks: AsyncIterator[str], *, chat: bool
    ) -> AsyncIterator[bytes]:
        count = 0
        async for piece in chunks:
            count += 1
            yield (json.dumps(self._piece(model, piece, chat=chat)) + "\n").encode()
        final = {
            **self._piece(model, "", chat=chat),
            **self._final_fields({"completion_tokens": count}),
        }
        yield (json.dumps(final) + "\n").encode()

    @staticmethod
    def _piece(model: str, text: str, *, chat: bool) -> dict[str, Any]:
        content: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        )
        return {"model": model, "created_at": _now(), **content, "done": False}

    @staticmethod
    def _final_fields(usage: dict[str, int]) -> dict[str, Any]:
        return {
            "done": True,
            "done_reason": "stop",
            "total_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
            "eval_count": int(usage.get("completion_tokens", 0)),
        }
