"""The service for real: uvicorn on 127.0.0.1, the tiny model, real store, memory and registry.

One auth-enabled server per module (its start is seconds); each test uses its own keys, so
the per-key rate limit of one test never touches another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from support.serving import serving_settings

from agent.memory import importance_score
from evolora.settings import Settings
from serving.app import create_app
from serving.local_server import running_server
from storage.store import Store

pytestmark = pytest.mark.server

RATE_LIMIT = 20
MAX_BODY = 20_000
MAX_PROMPT = 1_500


@dataclass
class Server:
    url: str
    settings: Settings
    store: Store

    def key(self, user_id: str, admin: bool = False) -> str:
        plaintext, _record = self.store.create_key(f"key-{user_id}", user_id, admin=admin)
        return plaintext

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    settings = serving_settings(tmp_path_factory.mktemp("serving"), tiny_model_dir,
                                auth_enabled=True, rate_limit_per_minute=RATE_LIMIT,
                                max_body_bytes=MAX_BODY, max_prompt_chars=MAX_PROMPT,
                                poll_interval_s=3600)
    with running_server(create_app(settings)) as url:
        yield Server(url, settings, Store.from_settings(settings))


# --- OpenAI compatibility ---------------------------------------------------------------------


def test_openai_client_chat_and_stream(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key("oa"),
                           max_retries=0)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="champion", messages=messages, max_tokens=8, temperature=0)
    assert raw.headers["x-evolora-adapter"] == "base"  # no champion registered
    reply = raw.parse()
    text = reply.choices[0].message.content
    assert isinstance(text, str) and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.model_extra["evolora_adapter"] == "base"

    stream = client.chat.completions.create(model="evolora", messages=messages, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same reply, token by token
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    # Sampling, top_p and stop (as a list and as a string) are accepted.
    sampled = client.chat.completions.create(model="base", messages=messages, max_tokens=6,
                                             temperature=0.8, top_p=0.9, stop=["\n", "."])
    assert "." not in (sampled.choices[0].message.content or "")
    client.chat.completions.create(model="base", messages=messages, max_tokens=4, stop="x")


def test_langchain_chat_openai(server: Server) -> None:
    chat = ChatOpenAI(base_url=f"{server.url}/v1", api_key=server.key("lc"), model="champion",
                      max_tokens=6, temperature=0, max_retries=0)
    reply = chat.invoke("Say hello.")
    assert isinstance(reply.content, str)
    assert reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in chat.stream("Say hello."))
    assert streamed == reply.content


def test_models_list(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key("models"),
                           max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[:3] == ["evolora", "champion", "base"]
    with server.client(server.key("models2")) as http:
        missing = http.post("/v1/chat/completions", json={
            "model": "v99", "messages": [{"role": "user", "content": "hi"}]})
        assert missing.status_code == 404
        unknown = http.post("/v1/chat/completions", json={
            "model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
        assert unknown.status_code == 404 and "unknown model" in unknown.json()["detail"]


# --- security and limits ----------------------------------------------------------------------


def test_auth_missing_bad_and_non_admin_keys(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body).status_code == 401
    bad = httpx.post(f"{server.url}/v1/chat/completions", json=body,
                     headers={"Authorization": "Bearer evk_not-a-real-key-at-all"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="evk_wrong", max_retries=0
                      ).models.list()
    with server.client(server.key("plain")) as http:
        assert http.post("/admin/reload").status_code == 403
    with server.client(server.key("root", admin=True)) as http:
        reload = http.post("/admin/reload")
        assert reload.status_code == 200 and reload.json()["adapter"] == "base"
    # Health and readiness need no key.
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["store"] is True


def test_rate_limit_answers_429_with_retry_after(server: Server) -> None:
    with server.client(server.key("greedy")) as http:
        codes = [http.get("/v1/memories").status_code for _ in range(RATE_LIMIT + 3)]
        assert codes[:RATE_LIMIT] == [200] * RATE_LIMIT
        limited = http.get("/v1/memories")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
    # Another key of the same server is not limited.
    with server.client(server.key("patient")) as http:
        assert http.get("/v1/memories").status_code == 200


def test_body_size_prompt_length_and_schema_errors(server: Server) -> None:
    with server.client(server.key("limits")) as http:
        huge = {"messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}
        too_big = http.post("/v1/chat/completions", json=huge)
        assert too_big.status_code == 413 and str(MAX_BODY) in too_big.json()["detail"]

        long_prompt = {"messages": [{"role": "user", "content": "y" * (MAX_PROMPT + 1)}]}
        too_long = http.post("/v1/chat/completions", json=long_prompt)
        assert too_long.status_code == 400 and str(MAX_PROMPT) in too_long.json()["detail"]
        too_long_q = http.post("/v1/agent/runs", json={"question": "q" * (MAX_PROMPT + 1)})
        assert too_long_q.status_code == 400

        bad = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "temperature": 5})
        assert bad.status_code == 422
        assert any(e["loc"][-1] == "temperature" for e in bad.json()["detail"])
        no_messages = http.post("/v1/chat/completions", json={"model": "base"})
        assert no_messages.status_code == 422
        assert any(e["loc"][-1] == "messages" for e in no_messages.json()["detail"])
        rating = http.post("/v1/feedback", json={"run_id": "x", "rating": 5})
        assert rating.status_code == 422 and rating.json()["detail"][0]["loc"][-1] == "rating"
        not_json = http.post("/v1/agent/runs", content=b"{not json",
                             headers={"content-type": "application/json"})
        assert not_json.status_code == 422


# --- agent, sessions, memories, feedback ------------------------------------------------------


def test_agent_run_session_feedback_and_memories(server: Server) -> None:
    with server.client(server.key("ann")) as http:
        first = http.post("/v1/agent/runs", json={"question": "My name is Ann. What is 3 * 4?"})
        assert first.status_code == 200, first.text
        run = first.json()
        assert run["run_id"] and run["session_id"] and run["adapter"] == "base"
        assert (run["final_answer"] is None) != (run["error"] is None) or run["final_answer"]
        second = http.post("/v1/agent/runs", json={"question": "And 5 + 5?",
                                                   "session_id": run["session_id"]})
        assert second.status_code == 200 and second.json()["session_id"] == run["session_id"]

        def run_memory() -> dict:
            return next(m for m in http.get("/v1/memories").json()["data"]
                        if m["metadata"].get("run_id") == run["run_id"])

        before = run_memory()
        assert before["importance"] == importance_score(before["text"], kind="episode")
        feedback = http.post("/v1/feedback", json={"run_id": run["run_id"], "rating": 1,
                                                   "comment": "good"})
        assert feedback.status_code == 200 and feedback.json()["rating"] == 1
        # The rating moves the importance of the memory the run left, as documented.
        liked = importance_score(before["text"], kind="episode", feedback=1)
        assert run_memory()["importance"] == liked > before["importance"]
        http.post("/v1/feedback", json={"run_id": run["run_id"], "rating": -1})
        assert run_memory()["importance"] == importance_score(
            before["text"], kind="episode", feedback=-1) < before["importance"]
        assert http.post("/v1/feedback", json={"run_id": "no-such-run",
                                               "rating": -1}).status_code == 404

        listed = http.get("/v1/memories").json()["data"]
        assert len(listed) == 2 and any("My name is Ann" in m["text"] for m in listed)
        found = http.get("/v1/memories/search", params={"q": "what is my name"}).json()["data"]
        assert found and "Ann" in found[0]["text"] and found[0]["score"] > 0
        doomed = listed[0]["id"]
        assert http.delete(f"/v1/memories/{doomed}").status_code == 204
        assert http.delete(f"/v1/memories/{doomed}").status_code == 404
        assert len(http.get("/v1/memories").json()["data"]) == 1
        assert http.post("/v1/agent/runs", json={"question": "hi", "session_id":
                                                 "no-such-session"}).status_code == 404


def test_another_user_sees_nothing(server: Server) -> None:
    with server.client(server.key("carol")) as carol:
        run = carol.post("/v1/agent/runs", json={"question": "My locker code is 4711."}).json()
        memory_id = carol.get("/v1/memories").json()["data"][0]["id"]
    with server.client(server.key("dave")) as dave:
        assert dave.get("/v1/memories").json()["data"] == []
        assert dave.get("/v1/memories/search", params={"q": "locker code"}).json()["data"] == []
        assert dave.delete(f"/v1/memories/{memory_id}").status_code == 404
        assert dave.post("/v1/feedback", json={"run_id": run["run_id"],
                                               "rating": -1}).status_code == 404
        stolen = dave.post("/v1/agent/runs", json={"question": "What was said?",
                                                   "session_id": run["session_id"]})
        assert stolen.status_code == 404
    # Carol's data is untouched by Dave's attempts.
    assert len(server.store.session_messages("carol", run["session_id"])) == 2


def test_metrics_expose_requests_tokens_adapter_and_process(server: Server) -> None:
    with server.client(server.key("metrics")) as http:
        http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 3})
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("evolora_http_requests_total", "evolora_http_request_duration_seconds_bucket",
                 "evolora_generated_tokens_total", "evolora_generation_tokens_per_second",
                 "evolora_serving_adapter_info", "evolora_adapter_swaps_total",
                 "evolora_process_rss_bytes", "evolora_process_cpu_percent",
                 "evolora_memories"):
        assert name in text, name
    assert 'route="/v1/chat/completions",status="200"' in text
    assert 'status="401"' in text  # from the auth test's refusals (same module server)


# --- restart ----------------------------------------------------------------------------------


def test_restart_keeps_sessions_and_memories(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = serving_settings(tmp_path, tiny_model_dir, poll_interval_s=3600)
    with running_server(create_app(settings)) as url:
        run = httpx.post(f"{url}/v1/agent/runs", json={"question": "I live in Oslo."},
                         timeout=60).json()
    with running_server(create_app(settings)) as url:  # a new app on the same data dir
        memories = httpx.get(f"{url}/v1/memories").json()["data"]
        assert any("Oslo" in m["text"] for m in memories)
        again = httpx.post(f"{url}/v1/agent/runs", json={"question": "Where do I live?",
                                                         "session_id": run["session_id"]},
                           timeout=60)
        assert again.status_code == 200 and again.json()["session_id"] == run["session_id"]
        assert httpx.post(f"{url}/v1/feedback", json={"run_id": run["run_id"],
                                                      "rating": 0}).status_code == 200
