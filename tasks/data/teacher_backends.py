"""Talking to one teacher backend: a chat call, its listed models, why a call failed.

Ollama backends speak the Ollama API; OpenAI backends and the embedded llama.cpp server
speak the OpenAI API. Credentials never leave this module unmasked: failure reasons and
URLs meant for logs go through `failure_reason` and `safe_url`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from evolora.settings import TeacherBackend


def chat(
    backend: TeacherBackend,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    temperature: float,
    base_url: str | None = None,
) -> str:
    """One completion from `model` on `backend` (at `base_url` when given), no retries."""
    if backend.kind == "ollama":
        import ollama

        with ollama.Client(
            host=backend.url, timeout=backend.timeout_s, headers=auth_headers(backend) or None
        ) as client:
            response = client.chat(
                model=model,
                messages=messages,
                options={"temperature": temperature, "num_predict": max_tokens},
            )
        return response.message.content or ""
    import openai

    key = backend.api_key.get_secret_value() if backend.api_key else "none"
    with openai.OpenAI(
        base_url=base_url or backend.url, api_key=key, timeout=backend.timeout_s, max_retries=0
    ) as client:  # retries are the caller's, with its log lines
        completion = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=temperature,
        )
    return completion.choices[0].message.content or ""


def listed_models(backend: TeacherBackend, timeout: float) -> set[Any]:
    """The model names an Ollama or OpenAI server lists (raises httpx.HTTPError)."""
    headers = auth_headers(backend)
    root = (backend.url or "").rstrip("/")
    if backend.kind == "ollama":
        response = httpx.get(f"{root}/api/tags", headers=headers, timeout=timeout)
        response.raise_for_status()
        return {m.get("name") or m.get("model") for m in response.json()["models"]}
    response = httpx.get(f"{root}/models", headers=headers, timeout=timeout)
    response.raise_for_status()
    return {m.get("id") for m in response.json().get("data", [])}


def model_listed(model: str, available: set[Any], *, ollama: bool) -> bool:
    if model in available:
        return True
    # Ollama names an untagged model "name:latest".
    return ollama and ":" not in model and f"{model}:latest" in available


def classify_failure(exc: BaseException) -> str:
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


def failure_reason(exc: BaseException, backend: TeacherBackend) -> str:
    """Why a call failed, in one line, with the backend's secrets masked."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    for secret in _secrets_of(backend):
        text = text.replace(secret, "***")
    return text


def safe_url(url: str | None) -> str | None:
    """The URL without user:password, for logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def auth_headers(backend: TeacherBackend) -> dict[str, str]:
    if backend.api_key is None:
        return {}
    return {"Authorization": f"Bearer {backend.api_key.get_secret_value()}"}


def _secrets_of(backend: TeacherBackend) -> Iterator[str]:
    if backend.api_key is not None and backend.api_key.get_secret_value():
        yield backend.api_key.get_secret_value()
    password = urlsplit(backend.url).password if backend.url else None
    if password:
        yield password
