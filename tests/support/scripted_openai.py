"""A loopback OpenAI-compatible server that answers from a script: agent tests without a model.

`/v1/chat/completions` answers each request with the next entry of `script` (a list, used in
order, the last entry repeating), or with `script(request_body)` when it is a function. An
entry is the reply text, or a directive that misbehaves on purpose:

- `"...text..."`: a normal completion with that content (a valid plan, prose, garbage);
- `Delay(seconds, text)`: sleep first (timeouts), in small steps so stop() is never held up;
- `Fail(status, message)`: an HTTP error with an OpenAI-style error body.

Every request body is kept in `.requests`, so tests can check what the client sent.

    with ScriptedOpenAI([plan_json, "APPROVE"]) as server:
        llm_config = {"config_list": [{"base_url": server.base_url, ...}]}
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from support.loopback import LoopbackServer


@dataclass(frozen=True)
class Delay:
    seconds: float
    text: str = ""


@dataclass(frozen=True)
class Fail:
    status: int = 500
    message: str = "scripted server error"


Reply = str | Delay | Fail
Script = list[Reply] | Callable[[dict[str, Any]], Reply]


def system_prompt(body: dict[str, Any]) -> str:
    """The system message of a chat request ("" if none): tells agents apart in a script."""
    for message in body.get("messages") or []:
        if message.get("role") == "system":
            return str(message.get("content") or "")
    return ""


class ScriptedOpenAI(LoopbackServer):
    """An OpenAI chat API on 127.0.0.1:<free port> whose replies come from `script`."""

    thread_name = "scripted-openai"

    def __init__(self, script: Script, *, model: str = "scripted") -> None:
        self.script = script
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__(self._build_app())

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>/v1"""
        return f"{self.root_url}/v1"

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if callable(self.script):
                return self.script(body)
            index = min(len(self.requests), len(self.script)) - 1
            return self.script[index]

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            reply = self._next_reply(body)
            if isinstance(reply, Fail):
                error = {"message": reply.message, "type": "server_error", "code": reply.status}
                return JSONResponse({"error": error}, status_code=reply.status)
            if isinstance(reply, Delay):
                until = time.monotonic() + reply.seconds
                while time.monotonic() < until and not self._stopping.is_set():
                    await asyncio.sleep(0.02)
                reply = reply.text
            return _completion(body.get("model") or self.model, reply)

        return app


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
