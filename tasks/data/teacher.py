"""The teacher LLM: rewords generated questions, with ordered fallback across backends.

Backends come from `TeacherSettings.backends` and are tried in order; an Ollama or OpenAI
backend's `models` are tried in order too (e.g. a DeepSeek-R1 distill, then
qwen2.5:7b-instruct, then a small one). Each (backend, model) gets `retries` more tries
with a short backoff, each try bounded by the backend's `timeout_s`; every failure is logged
with its reason and the next candidate is tried. A backend that cannot be reached at all is
skipped as a whole. The embedded backend is a llama.cpp server on 127.0.0.1 that starts on
first use. How one backend is spoken to is `tasks.data.teacher_backends`; how a reply is
cleaned is `tasks.data.teacher_replies`.

    with Teacher(settings.teacher) as teacher:
        paraphrase = paraphraser_or_none(teacher)   # None: generators keep template wording
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from engines.llama_server import EmbeddedLlamaServer, default_gguf_path
from evolora.logs import get_logger
from evolora.prompts import load_prompts
from evolora.settings import TeacherBackend, TeacherSettings
from tasks.data.teacher_backends import (
    chat,
    classify_failure,
    failure_reason,
    listed_models,
    model_listed,
    safe_url,
)
from tasks.data.teacher_replies import clean_paraphrase, strip_thinking

log = get_logger(__name__)
# The teacher's prompts are data: tasks/data/prompts.yaml.
PROMPTS = load_prompts(Path(__file__).with_name("prompts.yaml"),
                       ["paraphrase", "paraphrase_system"])

_BACKOFF_S = 0.25
_HEALTH_TIMEOUT_S = 5.0
_COOLDOWN_S = 30.0


class TeacherUnavailable(RuntimeError):
    """No configured teacher backend answered; the message lists why each one failed."""


@dataclass
class BackendStatus:
    """The health of one (backend, model): reachable, and the model there."""

    kind: str
    url: str | None
    model: str | None
    ok: bool
    detail: str


class _ModelMissing(Exception):
    """The server answered but does not have this model: try the next model, no retry."""


class _BackendDown(Exception):
    """Nothing listens there, or it refuses our key: its other models cannot answer either."""


class _BadReply(Exception):
    """An answer we cannot use (empty after removing the thinking)."""


class Teacher:
    """Completions from the first configured backend and model that answers."""

    def __init__(
        self,
        settings: TeacherSettings,
        *,
        embedded_gguf: Path | None = None,
        embedded_threads: int = 2,
        cooldown_s: float = _COOLDOWN_S,
    ) -> None:
        self.settings = settings
        self.embedded_threads = embedded_threads
        self.cooldown_s = cooldown_s
        # (backend index, model or None for the whole backend) -> skip until this time: a
        # generator calls complete() hundreds of times, and a dead first choice would cost
        # its connect/timeout and a warning on every one of them.
        self._skip_until: dict[tuple[int, str | None], float] = {}
        self._embedded_gguf = embedded_gguf
        self._embedded: EmbeddedLlamaServer | None = None
        self._embedded_lock = threading.Lock()
        self._used: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Teacher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the embedded server if this teacher started one."""
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def embedded_server(self) -> EmbeddedLlamaServer:
        """The embedded llama.cpp server, started on first call."""
        with self._embedded_lock:
            if self._embedded is None:
                gguf = self._embedded_gguf or default_gguf_path()
                self._embedded = EmbeddedLlamaServer(gguf, n_threads=self.embedded_threads)
            return self._embedded.start()

    @property
    def used(self) -> str | None:
        """What answered the last successful call, e.g. "ollama:qwen2.5:7b-instruct"."""
        return self._used

    # -- health ----------------------------------------------------------------------------

    def health(self) -> list[BackendStatus]:
        """One status per configured (backend, model); a dead backend gets one with no model."""
        if not self.settings.enabled:
            return []
        statuses: list[BackendStatus] = []
        for backend in self.settings.backends:
            try:
                statuses.extend(self._backend_health(backend))
            except Exception as exc:  # a health check reports, it never raises
                statuses.append(
                    BackendStatus(
                        backend.kind,
                        safe_url(backend.url),
                        None,
                        False,
                        failure_reason(exc, backend),
                    )
                )
        return statuses

    def _backend_health(self, backend: TeacherBackend) -> list[BackendStatus]:
        if backend.kind == "embedded":
            server = self.embedded_server()
            response = httpx.get(f"{server.root_url}/health", timeout=_HEALTH_TIMEOUT_S)
            ok = response.status_code == 200
            return [
                BackendStatus(
                    "embedded",
                    server.base_url,
                    server.model_name,
                    ok,
                    "healthy" if ok else f"HTTP {response.status_code}",
                )
            ]
        url = safe_url(backend.url)
        try:
            available = listed_models(backend, min(backend.timeout_s, _HEALTH_TIMEOUT_S))
        except httpx.HTTPError as exc:
            return [BackendStatus(backend.kind, url, None, False, failure_reason(exc, backend))]
        statuses = []
        listed = ", ".join(sorted(str(name) for name in available))[:200]
        for model in backend.models:
            found = model_listed(model, available, ollama=backend.kind == "ollama")
            if found:
                detail = "available"
            elif backend.kind == "ollama":
                detail = f"not pulled (ollama pull {model})"
            else:
                detail = f"not listed by the server (it lists: {listed})"
            statuses.append(BackendStatus(backend.kind, url, model, found, detail))
        return statuses

    # -- completions -----------------------------------------------------------------------

    def complete(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int = 128,
        temperature: float | None = None,
    ) -> str:
        """The first answer of the configured backends/models, thinking removed.

        Raises TeacherUnavailable (listing every failure) when none answers.
        """
        if not self.settings.enabled:
            raise TeacherUnavailable("the teacher is disabled (teacher.enabled: false)")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        temp = self.settings.temperature if temperature is None else temperature
        failures: list[str] = []
        for index, backend in enumerate(self.settings.backends):
            if self._cooling(index, None, failures, backend):
                continue
            try:
                models = self._models_of(backend)
            except Exception as exc:  # e.g. the embedded GGUF is missing
                reason = failure_reason(exc, backend)
                failures.append(f"{backend.kind}: {reason}")
                log.warning("teacher.backend.failed", kind=backend.kind, reason=reason)
                self._skip_until[(index, None)] = time.monotonic() + self.cooldown_s
                continue
            for model in models:
                if self._cooling(index, model, failures, backend):
                    continue
                try:
                    text = self._complete_with_retries(backend, model, messages, max_tokens, temp)
                except _BackendDown as exc:
                    failures.append(f"{backend.kind} {safe_url(backend.url)}: {exc}")
                    log.warning(
                        "teacher.fallback",
                        kind=backend.kind,
                        url=safe_url(backend.url),
                        model=model,
                        reason=f"backend {exc}",
                        next="next backend",
                    )
                    self._skip_until[(index, None)] = time.monotonic() + self.cooldown_s
                    break
                except Exception as exc:
                    reason = failure_reason(exc, backend)
                    failures.append(f"{backend.kind}:{model}: {reason}")
                    log.warning(
                        "teacher.fallback",
                        kind=backend.kind,
                        url=safe_url(backend.url),
                        model=model,
                        reason=reason,
                        next="next model or backend",
                    )
                    self._skip_until[(index, model)] = time.monotonic() + self.cooldown_s
                    continue
                self._used = f"{backend.kind}:{model}"
                return text
        summary = "; ".join(failures) or "no backend configured (teacher.backends is empty)"
        raise TeacherUnavailable(f"no teacher answered: {summary}")

    def _cooling(
        self, index: int, model: str | None, failures: list[str], backend: TeacherBackend
    ) -> bool:
        """Whether this backend (model None) or model failed less than cooldown_s ago."""
        until = self._skip_until.get((index, model))
        if until is None or time.monotonic() >= until:
            return False
        what = f"{backend.kind}:{model}" if model else f"{backend.kind} {safe_url(backend.url)}"
        failures.append(f"{what}: failed less than {self.cooldown_s:.0f} s ago, skipped")
        log.debug("teacher.skip", kind=backend.kind, model=model, reason="cooling down")
        return True

    def _models_of(self, backend: TeacherBackend) -> list[str]:
        if backend.kind == "embedded":
            # One model only: whatever is configured is an alias of the loaded GGUF.
            return backend.models[:1] or [self.embedded_server().model_name]
        return list(backend.models)

    def _complete_with_retries(
        self,
        backend: TeacherBackend,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
    ) -> str:
        attempts = backend.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                started = time.perf_counter()
                embedded = backend.kind == "embedded"
                base_url = self.embedded_server().base_url if embedded else None
                raw = chat(backend, model, messages, max_tokens, temperature, base_url)
                text = strip_thinking(raw)
                if not text:
                    raise _BadReply("empty reply after removing <think> blocks")
                log.debug(
                    "teacher.answered",
                    kind=backend.kind,
                    model=model,
                    attempt=attempt,
                    seconds=round(time.perf_counter() - started, 2),
                )
                return text
            except Exception as exc:
                kind = classify_failure(exc)
                if kind == "missing":
                    raise _ModelMissing(failure_reason(exc, backend)) from exc
                if kind == "refused":
                    raise _BackendDown(f"refused: {failure_reason(exc, backend)}") from exc
                if kind == "unreachable" and attempt == attempts:
                    raise _BackendDown(f"unreachable: {failure_reason(exc, backend)}") from exc
                if attempt == attempts:
                    raise
                log.info(
                    "teacher.retry",
                    kind=backend.kind,
                    url=safe_url(backend.url),
                    model=model,
                    attempt=attempt,
                    reason=failure_reason(exc, backend),
                )
                time.sleep(_BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # the loop always returns or raises

    # -- the teacher's job -----------------------------------------------------------------

    def paraphrase(self, question: str) -> str | None:
        """A one-line rewording of `question` keeping every number, or None (no teacher/garbage)."""
        try:
            reply = self.complete(
                PROMPTS["paraphrase"].format(question=question),
                system=PROMPTS["paraphrase_system"],
                max_tokens=max(32, len(question) // 2 + 32),
            )
        except TeacherUnavailable as exc:
            log.debug("teacher.paraphrase.unavailable", reason=str(exc)[:300])
            return None
        candidate = clean_paraphrase(question, reply)
        if candidate is None:
            log.debug("teacher.paraphrase.rejected", question=question, reply=reply[:200])
        return candidate


def paraphraser_or_none(teacher: Teacher | None) -> Callable[[str], str | None] | None:
    """`teacher.paraphrase` when some backend is reachable; else None and one warning."""
    if teacher is None or not teacher.settings.enabled:
        log.warning(
            "teacher.unavailable", message="no teacher configured: generators use template wording"
        )
        return None
    statuses = teacher.health()
    if not any(status.ok for status in statuses):
        details = [f"{s.kind} {s.url or ''} {s.model or ''}: {s.detail}".strip() for s in statuses]
        log.warning(
            "teacher.unavailable",
            message="no teacher reachable: generators use template wording",
            backends=details,
        )
        return None
    return teacher.paraphrase
