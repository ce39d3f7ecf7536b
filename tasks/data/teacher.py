"""The teacher LLM: rewords generated questions and writes rationales, with ordered fallback.

Backends come from `TeacherSettings.backends` and are tried in order; an Ollama or OpenAI
backend's `models` are tried in order too (e.g. a DeepSeek-R1 distill, then
qwen2.5:7b-instruct, then a small one). Each (backend, model) gets `retries` more tries
with a short backoff, each try bounded by the backend's `timeout_s`; every failure is logged
with its reason and the next candidate is tried. A backend that cannot be reached at all is
skipped as a whole. The embedded backend is a llama.cpp server on 127.0.0.1 that starts on
first use.

    with Teacher(settings.teacher) as teacher:
        paraphrase = paraphraser_or_none(teacher)   # None: generators keep template wording
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from engines.llama_server import EmbeddedLlamaServer, default_gguf_path
from evolora.logs import get_logger
from evolora.settings import TeacherBackend, TeacherSettings

log = get_logger(__name__)

# R1-style distills think aloud first; an unclosed block means the reply was cut mid-thought.
_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
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


def strip_thinking(text: str) -> str:
    """The reply without <think>...</think> blocks, trimmed."""
    return _THINK_BLOCK.sub("", text).strip()


def safe_url(url: str | None) -> str | None:
    """The URL without user:password, for logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


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
                        backend.kind, safe_url(backend.url), None, False, self._reason(exc, backend)
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
        timeout = min(backend.timeout_s, _HEALTH_TIMEOUT_S)
        headers = _auth_headers(backend)
        try:
            if backend.kind == "ollama":
                response = httpx.get(
                    f"{_strip(backend.url)}/api/tags", headers=headers, timeout=timeout
                )
                response.raise_for_status()
                available = {m.get("name") or m.get("model") for m in response.json()["models"]}
            else:
                response = httpx.get(
                    f"{_strip(backend.url)}/models", headers=headers, timeout=timeout
                )
                response.raise_for_status()
                available = {m.get("id") for m in response.json().get("data", [])}
        except httpx.HTTPError as exc:
            return [BackendStatus(backend.kind, url, None, False, self._reason(exc, backend))]
        statuses = []
        listed = ", ".join(sorted(str(name) for name in available))[:200]
        for model in backend.models:
            found = _model_listed(model, available, ollama=backend.kind == "ollama")
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
                reason = self._reason(exc, backend)
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
                    reason = self._reason(exc, backend)
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
                raw = self._call(backend, model, messages, max_tokens, temperature)
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
                kind = _classify(exc)
                if kind == "missing":
                    raise _ModelMissing(self._reason(exc, backend)) from exc
                if kind == "refused":
                    raise _BackendDown(f"refused: {self._reason(exc, backend)}") from exc
                if kind == "unreachable" and attempt == attempts:
                    raise _BackendDown(f"unreachable: {self._reason(exc, backend)}") from exc
                if attempt == attempts:
                    raise
                log.info(
                    "teacher.retry",
                    kind=backend.kind,
                    url=safe_url(backend.url),
                    model=model,
                    attempt=attempt,
                    reason=self._reason(exc, backend),
                )
                time.sleep(_BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _call(
        self,
        backend: TeacherBackend,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
    ) -> str:
        if backend.kind == "ollama":
            import ollama

            with ollama.Client(
                host=backend.url, timeout=backend.timeout_s, headers=_auth_headers(backend) or None
            ) as client:
                response = client.chat(
                    model=model,
                    messages=messages,
                    options={"temperature": temperature, "num_predict": max_tokens},
                )
            return response.message.content or ""
        import openai

        base_url = self.embedded_server().base_url if backend.kind == "embedded" else backend.url
        key = backend.api_key.get_secret_value() if backend.api_key else "none"
        with openai.OpenAI(
            base_url=base_url, api_key=key, timeout=backend.timeout_s, max_retries=0
        ) as client:  # retries are ours, with our log lines
            completion = client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
            )
        return completion.choices[0].message.content or ""

    def _reason(self, exc: BaseException, backend: TeacherBackend) -> str:
        """Why a call failed, in one line, with the backend's secrets masked."""
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        for secret in _secrets_of(backend):
            text = text.replace(secret, "***")
        return text

    # -- the two jobs of a teacher ---------------------------------------------------------

    def paraphrase(self, question: str) -> str | None:
        """A one-line rewording of `question` keeping every number, or None (no teacher/garbage)."""
        try:
            reply = self.complete(
                f"Reword this question. Keep every number, unit and date exactly as they are. "
                f"Reply with the reworded question only.\n\nQuestion: {question}",
                system="You reword questions. You answer with one line: the reworded question.",
                max_tokens=max(32, len(question) // 2 + 32),
            )
        except TeacherUnavailable as exc:
            log.debug("teacher.paraphrase.unavailable", reason=str(exc)[:300])
            return None
        candidate = clean_paraphrase(question, reply)
        if candidate is None:
            log.debug("teacher.paraphrase.rejected", question=question, reply=reply[:200])
        return candidate

    def rationale(self, question: str, answer: str) -> str | None:
        """One short sentence of reasoning from `question` to `answer`, or None."""
        try:
            reply = self.complete(
                f"Question: {question}\nAnswer: {answer}\n"
                "In one short sentence, explain how to get this answer.",
                system="You explain answers in one short sentence.",
                max_tokens=64,
            )
        except TeacherUnavailable as exc:
            log.debug("teacher.rationale.unavailable", reason=str(exc)[:300])
            return None
        return clean_rationale(question, answer, reply)


# -- reply checks (plain functions: the generators' safety net) ------------------------------

_LEADS = re.compile(
    r"^\s*(sure[,!.]?\s*)?(here is|here's)?\s*(the\s+)?(reworded|rephrased|paraphrased)?"
    r"\s*(question|version)?\s*:\s*",
    re.I,
)
_ECHO_WORDS = (
    "reword",
    "rephrase",
    "paraphrase",
    "reply with",
    "keep every number",
    "as an ai",
    "question:",
)
# Dates and times stay one token ("2024-01-03", "10:30"), so reordering their parts shows.
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")


def _numbers(text: str) -> Counter[str]:
    return Counter(_NUMBER.findall(text))


def clean_paraphrase(question: str, reply: str) -> str | None:
    """The reply as a usable rewording of `question`, or None when it is garbage.

    Garbage: empty, several lines, much longer than the question, echoing the instructions,
    identical to the question, not a question any more, or with other numbers than the
    question's (a lost number changes the checked answer; a new one is usually the model
    answering instead of rewording).
    """
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        return None
    text = _LEADS.sub("", lines[0]).strip().strip('"').strip("'").strip()
    if not text or len(text) > 2 * len(question) + 40:
        return None
    lowered = text.lower()
    if any(word in lowered for word in _ECHO_WORDS):
        return None
    if _normalise(text) == _normalise(question):
        return None
    if _numbers(text) != _numbers(question):
        return None
    if question.rstrip().endswith("?") and not text.endswith("?"):
        return None
    return text


def clean_rationale(question: str, answer: str, reply: str) -> str | None:
    """The reply's first sentence as a rationale, or None when it is not a usable one.

    Not usable: empty, long, echoing the instructions, or with a number that is neither in
    the question nor in the answer (a small model's arithmetic slips in there).
    """
    text = reply.strip().split("\n\n", 1)[0].replace("\n", " ").strip()
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].strip()
    if not sentence or len(sentence) > 300:
        return None
    lowered = sentence.lower()
    if "one short sentence" in lowered or "explain how" in lowered:
        return None
    if set(_numbers(sentence)) - set(_numbers(question)) - set(_numbers(answer)):
        return None
    return sentence


def _normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


# -- helpers ---------------------------------------------------------------------------------


def _classify(exc: BaseException) -> str:
    """'missing' (no such model), 'unreachable', 'refused' (credentials) or 'transient'."""
    import ollama
    import openai

    if isinstance(exc, ollama.ResponseError) and exc.status_code == 404:
        return "missing"
    if isinstance(exc, openai.NotFoundError):
        return "missing"
    if isinstance(exc, ollama.ResponseError) and exc.status_code in (401, 403):
        return "refused"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "refused"
    # ollama turns httpx.ConnectError into the builtin ConnectionError.
    if isinstance(exc, httpx.ConnectError | ConnectionError):
        return "unreachable"
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        return "unreachable"
    return "transient"


def _model_listed(model: str, available: set[Any], *, ollama: bool) -> bool:
    if model in available:
        return True
    # Ollama names an untagged model "name:latest".
    return ollama and ":" not in model and f"{model}:latest" in available


def _auth_headers(backend: TeacherBackend) -> dict[str, str]:
    if backend.api_key is None:
        return {}
    return {"Authorization": f"Bearer {backend.api_key.get_secret_value()}"}


def _secrets_of(backend: TeacherBackend) -> Iterator[str]:
    if backend.api_key is not None and backend.api_key.get_secret_value():
        yield backend.api_key.get_secret_value()
    password = urlsplit(backend.url).password if backend.url else None
    if password:
        yield password


def _strip(url: str | None) -> str:
    return (url or "").rstrip("/")


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


def langchain_chat_model(
    backend: TeacherBackend,
    *,
    model: str | None = None,
    temperature: float = 0.7,
    max_tokens: int | None = None,
    embedded: EmbeddedLlamaServer | None = None,
) -> Any:
    """A LangChain chat model for `backend` (ChatOllama or ChatOpenAI), its first model.

    An embedded backend needs the running server: pass `embedded=teacher.embedded_server()`.
    """
    name = model or (backend.models[0] if backend.models else None)
    if backend.kind == "ollama":
        from langchain_ollama import ChatOllama

        headers = _auth_headers(backend)
        return ChatOllama(
            model=name or "",
            base_url=backend.url,
            temperature=temperature,
            num_predict=max_tokens,
            client_kwargs={
                "timeout": backend.timeout_s,
                **({"headers": headers} if headers else {}),
            },
        )
    from langchain_openai import ChatOpenAI

    if backend.kind == "embedded":
        if embedded is None:
            raise ValueError(
                "an embedded teacher backend needs its running server: "
                "pass embedded=teacher.embedded_server()"
            )
        base_url, name = embedded.base_url, name or embedded.model_name
    else:
        base_url = backend.url
    return ChatOpenAI(
        model=name or "",
        base_url=base_url,
        api_key=backend.api_key or "none",  # type: ignore[arg-type]
        temperature=temperature,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        timeout=backend.timeout_s,
        max_retries=backend.retries,
    )
