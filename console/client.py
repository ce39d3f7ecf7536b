"""The service, as the console calls it: one method per route, every failure a ConsoleError
that says in a sentence what went wrong and how to fix it (never a traceback).

The API key is sent as a Bearer token and kept nowhere else: not in messages, not in logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

# Generation on a CPU takes seconds per step; reading a page must not hang on a dead service.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 300.0


class ConsoleError(RuntimeError):
    """A failure a person can act on: `message` says what happened, `fix` what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def sentence(self) -> str:
        return f"{self.message} {self.fix}".strip()


@dataclass
class ServiceClient:
    """Calls to the service at `base_url` with `api_key` (None: a service without auth)."""

    base_url: str
    api_key: str | None = None

    def _headers(self, key: str | None = None) -> dict[str, str]:
        key = key or self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _client(self, key: str | None = None) -> httpx.Client:
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return httpx.Client(base_url=self.base_url.rstrip("/"), headers=self._headers(key),
                            timeout=timeout)

    def _request(self, method: str, path: str, *, key: str | None = None,
                 **kwargs: Any) -> httpx.Response:
        try:
            with self._client(key) as client:
                response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._refused(response, admin=key is not None)
        return response

    # --- health and metrics ---------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """/readyz: ready or not, each component's check, the adapter serving."""
        try:
            with self._client() as client:
                response = client.get("/readyz")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code not in (200, 503):
            raise self._refused(response)
        return dict(response.json())

    def metrics_text(self) -> str:
        """/metrics, the Prometheus exposition text."""
        return self._request("GET", "/metrics").text

    def models(self) -> list[str]:
        """The model names this key may ask for (checks the key too)."""
        return [m["id"] for m in self._request("GET", "/v1/models").json()["data"]]

    # --- the agent --------------------------------------------------------------------------

    def agent_run_events(self, question: str, session_id: str | None = None
                         ) -> Iterator[dict[str, Any]]:
        """The agent's answer as events, as they come: `step` per tool step, then `answer`
        (run_id, session_id, final_answer, steps, error, adapter)."""
        body: dict[str, Any] = {"question": question, "stream": True}
        if session_id:
            body["session_id"] = session_id
        try:
            with self._client() as client, client.stream("POST", "/v1/agent/runs",
                                                         json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._refused(response)
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line.removeprefix("data: "))
                    if event.get("type") == "error":
                        raise ConsoleError(f"The agent run failed in the service "
                                           f"({event.get('message')}).",
                                           "Its log says why; ask again.")
                    yield event
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def feedback(self, run_id: str, rating: int) -> dict[str, Any]:
        """Rate an agent run: -1, 0 or 1."""
        return dict(self._request("POST", "/v1/feedback",
                                  json={"run_id": run_id, "rating": rating}).json())

    # --- memories ---------------------------------------------------------------------------

    def memories(self, limit: int = 500) -> list[dict[str, Any]]:
        """The caller's memories, newest first."""
        return list(self._request("GET", "/v1/memories", params={"limit": limit}).json()["data"])

    def search_memories(self, query: str, k: int = 20) -> list[dict[str, Any]]:
        """The caller's memories nearest in meaning to `query`, best first, with scores."""
        return list(self._request("GET", "/v1/memories/search",
                                  params={"q": query, "k": k}).json()["data"])

    def delete_memory(self, memory_id: str) -> None:
        self._request("DELETE", f"/v1/memories/{memory_id}")

    # --- admin ------------------------------------------------------------------------------

    def promote(self, version: str, admin_key: str | None, force: bool = False
                ) -> dict[str, Any]:
        """The gate's decision on `version` (applied when it passes, or with `force`)."""
        return dict(self._request("POST", "/admin/registry/promote", key=admin_key or None,
                                  json={"version": version, "force": force}).json())

    def rollback(self, admin_key: str | None) -> dict[str, Any]:
        """The new champion (the previous one) and the one it replaced."""
        return dict(self._request("POST", "/admin/registry/rollback",
                                  key=admin_key or None).json())

    # --- errors as sentences ----------------------------------------------------------------

    def _unreachable(self, exc: httpx.HTTPError) -> ConsoleError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(
                exc, httpx.ConnectTimeout):
            return ConsoleError(f"The service at {self.base_url} took too long to answer.",
                                "It may be busy with a long generation; try again.")
        return ConsoleError(f"The service at {self.base_url} does not answer.",
                            "Start it with `evolora serve -c <config>`, or set its address "
                            "in the sidebar.")

    @staticmethod
    def _refused(response: httpx.Response, admin: bool = False) -> ConsoleError:
        detail = _detail(response)
        code = response.status_code
        if code == 401:
            return ConsoleError(f"The service refused the API key ({detail}).",
                                "Create one with `evolora keys create NAME` and enter it in "
                                "the sidebar (or set EVOLORA_API_KEY before "
                                "`evolora console`).")
        if code == 403:
            which = "admin key" if admin else "key"
            return ConsoleError(f"The service refused this {which}: {detail}.",
                                "Use an admin key (`evolora keys create NAME --admin`).")
        if code == 429:
            wait = response.headers.get("retry-after", "a few")
            return ConsoleError(f"The service is rate-limiting this key: {detail}.",
                                f"Wait {wait} s and try again.")
        if code == 503:
            return ConsoleError(f"The service is not ready yet ({detail}).",
                                "Wait until it has loaded its model, then reload the page.")
        if code >= 500:
            return ConsoleError("The service failed on this request (its log says why).",
                                "Try again; if it keeps failing, check `evolora doctor`.")
        return ConsoleError(f"The service refused the request: {detail}.")


def _detail(response: httpx.Response) -> str:
    """The service's own message (`detail` or `error.message`), else the status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # a 422: the fields that were wrong
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}"
                           for e in detail)
    if not detail and isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"].get("message")
    return str(detail or f"HTTP {response.status_code}").rstrip(".")
