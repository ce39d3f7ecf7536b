"""The transformers engine under `serving.generation_timeout_s`: a reply past the limit is
stopped at its next token and answered 504, as on llama.cpp (tests/test_service_shutdown.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.serving import serving_settings

from serving.app import create_app
from serving.local_server import running_server


@pytest.mark.server
def test_a_transformers_reply_past_the_limit_is_a_504_and_frees_the_model(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # A millisecond: the limit passes during the prompt's prefill, so the first token stops it.
    settings = serving_settings(tmp_path, tiny_model_dir, engine="transformers",
                                generation_timeout_s=0.001, poll_interval_s=3600)
    with running_server(create_app(settings)) as url:
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "base", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a story."}]})
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["code"] == "generation_timeout"
        assert "serving.generation_timeout_s" in answer.json()["error"]["message"]
        assert "evolora_generation_timeouts_total 1.0" in httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
