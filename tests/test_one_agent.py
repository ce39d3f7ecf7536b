"""One agent: what evaluation scores is what the service answers.

For the same adapter and question, the service's agent route (a new user: no memories, no
history) must take exactly the steps and give exactly the answer (or the failure) that
evaluation recorded for that problem. Checked on the real test problems of the tiny
config, on the default llama.cpp engine with a real LoRA adapter as the registry's
champion, and on the transformers engine with a scripted model whose runs are multi-step
tool use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from support.scripted_model import ASSISTANT_START, build_scripted_model
from support.serving import (
    make_empty_db,
    prepare_registry,
    register_adapter,
    save_tiny_adapter,
    serving_settings,
)

from evolora.settings import Settings
from serving.app import create_app
from serving.local_server import running_server
from storage.store import Store
from tasks.data import build_splits, load_split
from tasks.evaluate import evaluate_adapters

pytestmark = pytest.mark.server


def served_runs(settings: Settings, questions: list[str]) -> list[dict[str, Any]]:
    """Each question asked once through /v1/agent/runs, each by a new user."""
    store = Store.from_settings(settings)
    answers = []
    with running_server(create_app(settings)) as url:
        for index, question in enumerate(questions):
            key, _record = store.create_key(f"asker-{index}", f"asker-{index}")
            response = httpx.post(f"{url}/v1/agent/runs", json={"question": question},
                                  headers={"Authorization": f"Bearer {key}"}, timeout=120)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    store.close()
    return answers


def assert_same_runs(evaluated: list[dict[str, Any]], served: list[dict[str, Any]],
                     adapter: str) -> None:
    for scored, answer in zip(evaluated, served, strict=True):
        assert answer["adapter"] == adapter
        assert answer["steps"] == scored["steps"], scored["question"]
        assert (answer["final_answer"] or "") == scored["predicted"], scored["question"]
        assert answer["error"] == scored["error"], scored["question"]


def test_the_served_agent_takes_the_steps_evaluation_scored(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = serving_settings(tmp_path, tiny_model_dir, auth_enabled=True,
                                poll_interval_s=3600, rate_limit_per_minute=1000)
    client = prepare_registry(settings, make_empty_db(tmp_path))
    adapter = save_tiny_adapter(tiny_model_dir, tmp_path / "champ", seed=3)
    version = register_adapter(client, adapter, "champ")
    client.set_registered_model_alias(settings.evolution.registry_model_name, "champion",
                                      version.version)
    test = [dict(row) for row in load_split(
        build_splits(settings.data, settings.paths.data_dir).test_path)]
    result = evaluate_adapters(settings, str(tiny_model_dir), test, {"champ": adapter})["champ"]

    served = served_runs(settings, [row["question"] for row in test])

    assert_same_runs(result.rows, served, f"v{version.version}")


def test_multi_step_tool_use_is_the_same_in_evaluation_and_in_service(
    tmp_path: Path
) -> None:
    think = "Thought: add them.\nAction: calculator\nAction Input: 19 + 23\n"
    model = build_scripted_model(tmp_path / "scripted", {
        ASSISTANT_START: think, "Observation: 42\n": "Thought: now double.\n",
        "Thought: now double.\n": "Action: calculator\nAction Input: 42 * 2\n",
        "Observation: 84\n": "Thought: I have the answer.\nFinal Answer: 84"})
    settings = serving_settings(tmp_path, model, auth_enabled=True, poll_interval_s=3600,
                                engine="transformers")
    rows = [{"id": f"test-arithmetic-hard-{i}", "skill": "arithmetic", "level": "hard",
             "question": question, "answer": "84", "tool_calls": []}
            for i, question in enumerate(["What is (19 + 23) * 2?", "Double 19 plus 23."])]
    result = evaluate_adapters(settings, str(model), rows, {"base": None})["base"]
    assert [len(row["steps"]) for row in result.rows] == [2, 2]
    assert [row["predicted"] for row in result.rows] == ["84", "84"]

    assert_same_runs(result.rows, served_runs(settings, [r["question"] for r in rows]),
                     "base")
