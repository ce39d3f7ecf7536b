"""The llama.cpp engine: the base GGUF plus GGUF LoRA adapters, parallel slots, blue/green.

One *instance* is a llama.cpp server (engines/llama_server.py, in a child process) loaded
with the base GGUF and every attached adapter at scale 0. Each request names its adapter by
sending an explicit scale for every loaded one (1 for it, 0 for the rest: the installed
llama.cpp applies an adapter it was not told to zero). The server decodes up to `slots` requests at
once, batched, with its C++ threads; Python only waits on HTTP.

llama.cpp loads adapter files only at start, so attaching or detaching one is blue/green:
a new instance with the new set is loaded beside the serving one (~0.5 s for a 135M model,
no lock held), the pointer moves under a lock held for microseconds, requests already
running finish on the old instance, and the old instance stops when its last lease ends.

Prompts go in as token ids from the base folder's Hugging Face tokenizer, so both engines
see exactly the same tokens for the same text.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from engines.engine import ContextExceeded, GenerationTimeout
from engines.gguf_lora import ADAPTER_GGUF_NAME, convert_adapter, verify_checksum
from engines.llama_server import EmbeddedLlamaServer
from engines.transformers_runtime import (
    BASE_ADAPTER,
    AdapterError,
    ChatText,
    cut_at_stop,
    load_tokenizer,
)
from evolora.logs import get_logger
from evolora.scratch import claim_scratch

log = get_logger(__name__)

REQUEST_TIMEOUT_S = 600.0
# What converted adapters were called before each engine wrote into a folder of its own.
_LEGACY_CONVERTED = re.compile(r".+-[0-9a-f]{8}\.gguf(\.sha256)?")


@dataclass
class _Instance:
    """One loaded llama.cpp server and the adapters it holds, by lora index."""

    server: EmbeddedLlamaServer
    adapter_ids: dict[str, int]
    client: httpx.Client
    leases: int = 0
    retired: bool = False
    started_at: float = field(default_factory=time.time)

    def lora(self, adapter: str) -> list[dict[str, float]]:
        """The request's `lora` field: an explicit scale for every loaded adapter."""
        if adapter != BASE_ADAPTER and adapter not in self.adapter_ids:
            raise AdapterError(f"no adapter named {adapter!r}; attached: "
                               f"{', '.join(self.adapter_ids) or 'none'}")
        return [{"id": index, "scale": 1.0 if name == adapter else 0.0}
                for name, index in self.adapter_ids.items()]

    def close(self) -> None:
        self.client.close()
        self.server.stop()


class LlamaCppEngine(ChatText):
    """An `InferenceEngine` on llama.cpp; see the module docstring."""

    engine_name = "llamacpp"

    def __init__(self, base_gguf: Path, tokenizer_dir: str | Path, *, work_dir: Path,
                 slots: int = 4, slot_context: int = 2048, threads: int = 2,
                 adapters: Mapping[str, Path] | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_gguf = Path(base_gguf)
        self.tokenizer = load_tokenizer(str(tokenizer_dir))
        # Converted adapters go into a folder this engine owns (evolora/scratch.py): what a
        # killed process left under work_dir is swept now, a live one's is never touched.
        self._scratch = claim_scratch(Path(work_dir), legacy=_is_legacy_conversion)
        self.work_dir = self._scratch.path
        self.slots = slots
        self.slot_context = slot_context
        self.threads = threads
        # One generation's wall-clock limit: past it the HTTP request is dropped, and
        # llama.cpp cancels a task whose connection closed (the slot is freed).
        self.request_timeout_s = request_timeout_s
        self._sources: dict[str, str] = {}  # adapter name -> the folder it came from
        self._gguf: dict[str, Path] = {}  # adapter name -> its GGUF LoRA file
        self._owned: set[Path] = set()  # GGUF files we converted (deleted on detach)
        self._state = threading.Lock()  # guards _current and the leases
        self._rebuild = threading.Lock()  # one instance change at a time
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="llamacpp")
        self._closed = False
        # Adapters known up front load with the first instance (one start, not one per
        # adapter): evaluation knows all its candidates.
        try:
            for name, adapter_dir in (adapters or {}).items():
                self._gguf[name] = self._adapter_gguf(name, Path(adapter_dir))
                self._sources[name] = str(adapter_dir)
            self._current = self._start_instance(dict(self._gguf))
        except BaseException:
            self._pool.shutdown(wait=False)
            self._scratch.release()
            raise
        self.instances_started = 1

    # --- adapters -------------------------------------------------------------------------------

    @property
    def adapters(self) -> Mapping[str, str]:
        return dict(self._sources)

    def attach(self, name: str, adapter_dir: str | Path) -> float:
        """Convert (or reuse) the adapter's GGUF and move to an instance holding it.

        Returns the seconds new requests were blocked: the pointer move, not the loading."""
        if name == BASE_ADAPTER:
            raise AdapterError(f"{BASE_ADAPTER!r} names the bare base model; pick another name")
        adapter_dir = Path(adapter_dir)
        gguf_path = self._adapter_gguf(name, adapter_dir)
        with self._rebuild:
            wanted = {**self._gguf, name: gguf_path}
            blocked = self._switch_to(wanted)
            self._sources[name] = str(adapter_dir)
            self._gguf = wanted
        log.info("adapter.attached", engine=self.engine_name, name=name, path=str(adapter_dir))
        return blocked

    def detach(self, name: str) -> None:
        """Move to an instance without `name`; its converted file goes when unused."""
        with self._rebuild:
            if name not in self._gguf:
                raise AdapterError(f"no adapter named {name!r}")
            wanted = {key: path for key, path in self._gguf.items() if key != name}
            self._switch_to(wanted)
            removed = self._gguf[name]
            self._gguf = wanted
            del self._sources[name]
        if removed in self._owned:
            self._owned.discard(removed)
            removed.unlink(missing_ok=True)
            removed.with_name(removed.name + ".sha256").unlink(missing_ok=True)

    def _adapter_gguf(self, name: str, adapter_dir: Path) -> Path:
        """A verified GGUF beside the PEFT files (the registry ships one), else a fresh one."""
        shipped = adapter_dir / ADAPTER_GGUF_NAME
        if shipped.is_file() and verify_checksum(shipped):
            return shipped
        out = self.work_dir / f"{name}-{uuid.uuid4().hex[:8]}.gguf"
        convert_adapter(adapter_dir, self.base_gguf, out)
        self._owned.add(out)
        return out

    def _switch_to(self, adapters: dict[str, Path]) -> float:
        new = self._start_instance(adapters)
        with self._state:
            held_from = time.perf_counter()
            old, self._current = self._current, new
            old.retired = True
            idle = old.leases == 0
            blocked = time.perf_counter() - held_from
        self.instances_started += 1
        if idle:
            old.close()
        return blocked

    def _start_instance(self, adapters: dict[str, Path]) -> _Instance:
        names = list(adapters)
        server = EmbeddedLlamaServer(
            self.base_gguf, n_threads=self.threads, n_parallel=self.slots,
            ctx_size=self.slots * self.slot_context, lora_paths=[adapters[n] for n in names],
            # In a child process: loading holds the GIL for seconds, which in this process
            # would freeze the service (event loop, /healthz) at every blue/green swap.
            isolated=True)
        server.start()
        client = httpx.Client(base_url=server.root_url,
                              timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
                              limits=httpx.Limits(max_connections=self.slots * 4))
        return _Instance(server, {n: i for i, n in enumerate(names)}, client)

    @contextmanager
    def _lease(self) -> Iterator[_Instance]:
        """The serving instance, kept alive until the block ends."""
        with self._state:
            if self._closed:
                raise AdapterError("the llama.cpp engine is closed")
            instance = self._current
            instance.leases += 1
        try:
            yield instance
        finally:
            with self._state:
                instance.leases -= 1
                done = instance.retired and instance.leases == 0
            if done:
                instance.close()

    # --- generation -----------------------------------------------------------------------------

    @property
    def concurrent_requests(self) -> int:
        """Single-prompt requests decoded together: one per slot."""
        return self.slots

    def _body(self, instance: _Instance, prompt: str, adapter: str, max_new_tokens: int,
              stop: list[str] | None, temperature: float, top_p: float) -> dict[str, Any]:
        return {
            "prompt": self.tokenizer(prompt, add_special_tokens=False)["input_ids"],
            "n_predict": max_new_tokens,
            # llama.cpp samples greedily at temperature <= 0, as transformers does at 0.
            "temperature": temperature,
            "top_p": top_p,
            "stop": list(stop or []),
            "lora": instance.lora(adapter),
            # ReAct rounds extend the previous prompt: reuse its cached prefix.
            "cache_prompt": True,
        }

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, adapter: str | None = None) -> list[str]:
        """Continue each prompt on `adapter`; up to `slots` decode at once, batched.

        A reply not back within `request_timeout_s` raises GenerationTimeout: the request
        is dropped, and llama.cpp cancels a task whose connection closed."""
        adapter = adapter or BASE_ADAPTER
        with self._lease() as instance:
            bodies = [self._body(instance, prompt, adapter, max_new_tokens, stop, temperature,
                                 top_p) for prompt in prompts]

            def one(body: dict[str, Any]) -> str:
                try:
                    response = instance.client.post("/completion", json=body)
                except httpx.TimeoutException:
                    raise self._timed_out() from None
                _raise_for(response)
                return str(response.json()["content"])

            # One prompt (every service request) runs on the caller's thread: a pool
            # thread would be joined at interpreter exit, holding a stopping service.
            # One prompt (every service request) is read as a stream on the caller's thread,
            # so a time limit or the engine closing ends it at the next token (a blocked
            # non-streamed request would hold a stopping service until it finished).
            texts = [self._reply(instance, bodies[0])] if len(bodies) == 1 \
                else list(self._pool.map(one, bodies))
        return [cut_at_stop(text, stop or []) for text in texts]

    def stream(self, prompt: str, *, adapter: str, max_new_tokens: int = 96,
               stop: list[str] | None = None, temperature: float = 0.0, top_p: float = 1.0
               ) -> Generator[str, None, None]:
        """Yield the reply's pieces as llama.cpp decodes them (stop strings never emitted).

        Closing the generator early closes the HTTP stream, and llama.cpp stops decoding
        for it at its next token: the slot is free for the next request."""
        with self._lease() as instance:
            body = self._body(instance, prompt, adapter, max_new_tokens, stop, temperature,
                              top_p)
            yield from self._pieces(instance, body)

    def _reply(self, instance: _Instance, body: dict[str, Any]) -> str:
        """One reply, streamed, with the text llama.cpp's non-streamed reply has.

        The stop strings are matched here (leaving at one closes the stream, which ends the
        generation there): llama.cpp's stream holds back text that could begin a stop
        string and drops it when generation ends at the length limit. Tokens of an
        unfinished UTF-8 character at the end become one U+FFFD, as in the non-streamed
        text."""
        stop = body["stop"]
        text, tail = "", _StreamTail()
        for piece in self._pieces(instance, {**body, "stop": []}, tail):
            text += piece
            if stop and any(s in text[-(len(piece) + max(map(len, stop))):] for s in stop):
                return text
        return text + "\ufffd" if tail.unfinished_character else text

    def _pieces(self, instance: _Instance, body: dict[str, Any],
                tail: _StreamTail | None = None) -> Iterator[str]:
        """The reply's pieces from llama.cpp's token stream, within the time limit.

        Leaving early (a limit, the engine closing, the reader gone) closes the HTTP
        stream, and llama.cpp cancels a task whose connection closed."""
        deadline = time.monotonic() + self.request_timeout_s
        with instance.client.stream("POST", "/completion", json={**body, "stream": True}
                                    ) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            lines = _event_lines(response)
            while True:
                try:
                    line = next(lines)
                except StopIteration:
                    return
                except httpx.TimeoutException:
                    raise self._timed_out() from None
                if time.monotonic() > deadline:
                    raise self._timed_out()
                if self._closed:
                    raise AdapterError("the llama.cpp engine closed during the generation")
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: "):])
                if tail is not None:
                    tail.read(event)
                if event.get("content"):
                    yield str(event["content"])
                if event.get("stop"):
                    return

    def _timed_out(self) -> GenerationTimeout:
        log.warning("engine.generation_timeout", engine=self.engine_name,
                    limit_s=self.request_timeout_s)
        return GenerationTimeout(f"the generation ran past {self.request_timeout_s:g} s "
                                 "(serving.generation_timeout_s) and was cancelled")

    def close(self) -> None:
        """Stop every instance (in-flight requests on a retired one are cut)."""
        with self._state:
            self._closed = True
            instance = self._current
        instance.close()
        self._pool.shutdown(wait=False)
        for path in self._owned:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        self._owned.clear()
        self._scratch.release()

    @property
    def base_url(self) -> str:
        """The serving instance's OpenAI base URL (for bench/ and debugging)."""
        return self._current.server.base_url

    def __repr__(self) -> str:
        return (f"LlamaCppEngine({self.base_gguf.name}, slots={self.slots}, "
                f"adapters={list(self._gguf)})")


def _is_legacy_conversion(path: Path) -> bool:
    return path.is_file() and _LEGACY_CONVERTED.fullmatch(path.name) is not None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        message = f"llama.cpp answered HTTP {response.status_code}: {response.text[:300]}"
        if "exceed_context_size_error" in response.text:
            raise ContextExceeded(message)
        raise AdapterError(message)


@dataclass
class _StreamTail:
    """What a token stream's events say about the text still unsent when it ends.

    llama.cpp sends no text for the tokens of an unfinished UTF-8 character (and lists
    them in no event; `tokens_predicted` counts them), nor for the end-of-text token; the
    non-streamed reply ends an unfinished character in one U+FFFD."""

    predicted: int = 0  # tokens generated so far
    sent_through: int = 0  # tokens generated up to the last event with text
    stop_type: str | None = None

    def read(self, event: Mapping[str, Any]) -> None:
        self.predicted = max(self.predicted, int(event.get("tokens_predicted") or 0))
        if event.get("content"):
            self.sent_through = self.predicted
        if event.get("stop"):
            self.stop_type = event.get("stop_type")

    @property
    def unfinished_character(self) -> bool:
        unsent = self.predicted - self.sent_through
        return unsent - (1 if self.stop_type == "eos" else 0) > 0


def _event_lines(response: httpx.Response) -> Iterator[str]:
    """The event stream's lines, split at line feeds only.

    httpx's iter_lines splits as str.splitlines does, also at U+0085, U+2028 and other
    characters a generated string can hold unescaped in its JSON: an event cut there
    fails to parse."""
    buffer = b""
    for chunk in response.iter_bytes():
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")
