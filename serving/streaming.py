"""A streamed response whose generator is closed the moment the response ends, so a client
that leaves mid-stream stops the generation behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.schemas import Usage

_END = object()


def usage_and_done(completion_id: str, created: int, model: str, adapter: str,
                   usage: Usage | None) -> Iterator[str]:
    """A chat stream's last events: the usage chunk (when the client asked for it), [DONE]."""
    if usage is not None:
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "evolora_adapter": adapter, "choices": [],
                "usage": usage.model_dump()}
        yield f"data: {json.dumps(data)}\n\n"
    yield "data: [DONE]\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse over a generator, closed however the response ends, and then
    `on_close` called (also when the generator never started: the client left first).

    Starlette stops sending when the client disconnects but leaves the body iterator to
    the garbage collector; a generator parked there would keep its engine stream (a
    llama.cpp slot) generating until then. Closing it runs its `finally` blocks now."""

    def __init__(self, content: Generator[str, None, None],
                 on_close: Callable[[], None] | None = None, **kwargs: Any) -> None:
        self._source = content
        self._on_close = on_close
        super().__init__(_in_threads(content), **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: when the request was cancelled, the close must still happen. No
            # thread is inside the generator now: a cancelled `run_sync` waits for its
            # thread to return first.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        try:
            self._source.close()
        finally:
            if self._on_close is not None:
                self._on_close()


async def _in_threads(source: Generator[str, None, None]) -> AsyncIterator[str]:
    """The generator's items, each produced in a worker thread (they block on the engine)."""
    while True:
        item = await anyio.to_thread.run_sync(next, source, _END)
        if not isinstance(item, str):  # _END
            return
        yield item
