"""The web console, page by page, with Streamlit's own testing API against the real service
on loopback and a real registry (tests/support/console_world.py): the charts get the
store's numbers, promote and rollback move the registry, delete forgets the memory, errors
are sentences. One module-wide world: the service's start and the registry cost seconds.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest
from support.console_world import (
    ANSWER,
    MEMORIES,
    QUESTION,
    SCORES,
    SKILLS,
    ConsoleWorld,
    console_world,
)

from console.cycles import CycleHistory
from console.launch import APP, CHROMEDRIVER, CHROMIUM, chromium, running_console
from console.system import parse_metrics
from evolora.vocabulary import CHAMPION, PREVIOUS
from tasks.registry import get_alias

pytestmark = pytest.mark.server

MODEL = "evolora-adapter"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleWorld]:
    with console_world(tmp_path_factory.mktemp("console")) as built:
        yield built


def page(name: str | None = None, **state: Any) -> AppTest:
    """The app after one run, on page `name` (the chat when None)."""
    app = AppTest.from_file(str(APP), default_timeout=120)
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    if name:
        app.switch_page(f"views/{name}.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def chart_frames(app: AppTest) -> list[pd.DataFrame]:
    """The data each chart on the page was sent, as frames (Arrow datasets of the spec)."""
    frames = []
    for chart in app.get("vega_lite_chart"):
        for dataset in chart.proto.datasets:
            frames.append(pa.ipc.open_stream(io.BytesIO(dataset.data.data)).read_pandas())
    return frames


def texts(app: AppTest) -> str:
    """Every text the page shows (markdown, captions, alerts), one string."""
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "success", "info", "title"):
        parts += [str(element.value) for element in app.get(kind)]
    return "\n".join(parts)


def series(frame: pd.DataFrame, column: str, name: str) -> list[float]:
    return frame[frame[column] == name].sort_values("cycle")["accuracy"].round(3).tolist()


# --- chat -----------------------------------------------------------------------------------


def test_chat_streams_the_steps_names_the_adapter_rates_and_continues_the_session(
        world: ConsoleWorld) -> None:
    app = page()
    app.chat_input(key="question").set_value(QUESTION).run()
    assert not app.exception and not app.error, texts(app)
    shown = texts(app)
    assert ANSWER in shown and "answered by `v2`" in shown  # v2 is the champion
    # The steps were written into the status box as they came.
    streamed = app.status[0]
    assert streamed.label == "1 tool step" and "**calculator**(`12 * 7`) → `84`" in texts_of(
        streamed)
    session = app.session_state["session_id"]
    assert f"session `{session}`" in shown
    # Thumbs up reaches the service: the run's trace is rated.
    app.feedback[0].set_value(1).run()
    # Drawn again from the history: the steps in an expander above the answer.
    assert app.expander[0].label == "1 tool step" and "calculator" in texts_of(app.expander[0])
    assert not app.error, texts(app)

    run_id = app.session_state["chat"][-1]["run_id"]
    rated = {t["id"]: t for t in world.store.traces_since(None)}[run_id]
    assert rated["feedback"] == 1 and rated["adapter_version"] == "v2"
    # The second question continues the same session in the service.
    app.chat_input(key="question").set_value("And again?").run()
    assert app.session_state["session_id"] == session
    messages = world.store.session_messages("ann", session)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert messages[1]["content"] == ANSWER


def texts_of(block: Any) -> str:
    return "\n".join(str(e.value) for e in block.get("markdown"))


def test_a_streamed_agent_run_sends_its_steps_then_the_answer(world: ConsoleWorld) -> None:
    key = {"Authorization": f"Bearer {world.user_key}"}
    with httpx.stream("POST", f"{world.url}/v1/agent/runs", headers=key, timeout=60,
                      json={"question": QUESTION, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]" and [e["type"] for e in events] == ["step", "answer"]
    assert (events[0]["tool"], events[0]["observation"]) == ("calculator", ANSWER)
    answer = events[1]
    assert answer["final_answer"] == ANSWER and answer["steps"] == [
        {k: events[0][k] for k in ("thought", "tool", "argument", "observation")}]
    # The checks come before the stream: an unknown session is a plain 404.
    refused = httpx.post(f"{world.url}/v1/agent/runs", headers=key, timeout=60,
                         json={"question": QUESTION, "stream": True, "session_id": "nope"})
    assert refused.status_code == 404 and refused.json()["detail"] == "no such session"


# --- progress -------------------------------------------------------------------------------


def test_progress_plots_the_champion_after_each_cycle_and_the_running_cycle(
        world: ConsoleWorld) -> None:
    app = page("progress")
    accuracy, per_skill = chart_frames(app)
    # Cycle 1 promoted v1, cycle 2 v2; cycle 3's v3 was refused, so v2 stays the champion.
    assert series(accuracy, "series", "overall") == [SCORES["1"][0], SCORES["2"][0],
                                                     SCORES["2"][0]]
    assert series(accuracy, "series", "easy") == [SCORES["1"][1], SCORES["2"][1],
                                                  SCORES["2"][1]]
    assert series(accuracy, "series", "hard") == [SCORES["1"][2], SCORES["2"][2],
                                                  SCORES["2"][2]]
    assert set(per_skill["skill"]) == set(SKILLS)
    dates = SKILLS.index("dates")
    assert series(per_skill, "skill", "dates") == [SCORES["1"][3][dates],
                                                   SCORES["2"][3][dates],
                                                   SCORES["2"][3][dates]]
    decisions = app.dataframe[0].value
    assert decisions["cycle"].tolist() == world.cycle_ids[::-1]  # newest first
    assert decisions["decision"].tolist() == ["refused", "promoted", "promoted"]
    refused = decisions.iloc[0]["why"]
    assert "dates" in refused and "0.250 -> 0.000" in refused and "tolerance" in refused
    # The running cycle: stage 2 of 2, 4 of 10 steps, its share of the estimate done.
    bar = app.get("progress")[0]
    assert f"Cycle {world.running_cycle} is running" in [s.value for s in app.subheader]
    assert "stage 2 of 2: train g0-m0 (generalist) (4/10 steps)" in bar.proto.text
    # 150 s of data and 4 of 10 steps at 9 s each: (150 + 36) / (150 + 90) done.
    assert abs(bar.value - 100 * 186 / 240) <= 1 and "78% · stage 2 of 2" in bar.proto.text
    assert "elapsed 3:06 · ~0:54 left" in texts(app)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["champion"] == "v2" and metrics["test accuracy"] == "0.50"


def test_nights_json_adds_its_columns_and_the_nights_mlflow_lacks(
        world: ConsoleWorld, tmp_path: Path) -> None:
    nights = tmp_path / "nights.json"
    nights.write_text(json.dumps({"cycles": [
        {"cycle_id": world.cycle_ids[0], "train_steps": 72, "test_problems": 60},
        {"cycle_id": "29991231-000000", "champion": 0.6, "champion_hard": 0.4,
         "champion_version": "2", "promoted": False, "train_steps": 80}]}))
    history = CycleHistory(world.client, MODEL, SKILLS)
    records = history.records(nights)
    assert [r.cycle_id for r in records] == [*world.cycle_ids, "29991231-000000"]
    assert records[0].train_steps == 72 and records[0].source == "mlflow"
    extra = records[-1]
    assert (extra.source, extra.champion, extra.train_steps) == ("nights.json", 0.6, 80)
    assert extra.skills["arithmetic"] == SCORES["2"][3][0]  # from v2's registry tags


# --- adapters -------------------------------------------------------------------------------


def test_adapters_side_by_side_and_the_champions_genealogy(world: ConsoleWorld) -> None:
    app = page("adapters")
    table = app.dataframe[0].value
    assert table["version"].tolist() == ["v3", "v2", "v1"]
    assert table.set_index("version").loc["v2", "aliases"] == "champion"
    skills, levels = chart_frames(app)
    for version in ("1", "2", "3"):
        got = skills[skills["version"] == f"v{version}"].set_index("name")["accuracy"]
        assert got.to_dict() == dict(zip(SKILLS, SCORES[version][3], strict=True))
        got = levels[levels["version"] == f"v{version}"].set_index("name")["accuracy"]
        assert got.to_dict() == {"easy": SCORES[version][1], "hard": SCORES[version][2]}
    dot = app.get("graphviz_chart")[0].proto.spec
    cycle2 = world.cycle_ids[1]
    # v2 is cycle 2's merge of two specialists, which continued its generalist, which
    # continued v1, the champion before: drawn from the registry and cycle 2's journal.
    assert f'"{cycle2}/g0-m1" -> v2 [label="linear 0.5/0.5"' in dot
    assert f'"{cycle2}/g0-m0" -> "{cycle2}/g0-m1" [label=continued' in dot
    assert f'v1 -> "{cycle2}/g0-m0" [label=continued' in dot
    assert "g1-c0 · generation 1" in dot and "generalist on arithmetic" in dot


def test_promote_and_rollback_need_an_admin_key_and_a_confirmation(
        world: ConsoleWorld) -> None:
    app = page("adapters")
    app.selectbox(key="promote-version").set_value("1")
    app.checkbox(key="force").check()
    app.button(key="promote").click().run()
    assert "Really promote v1 (gate skipped)?" in texts(app)
    assert str(get_alias(world.client, MODEL, CHAMPION).version) == "2"  # not yet
    app.button(key="confirm-admin").click().run()
    # The sidebar's key is Ann's, no admin: refused, in a sentence with the fix.
    assert "Use an admin key (`evolora keys create NAME --admin`)" in texts(app)
    assert str(get_alias(world.client, MODEL, CHAMPION).version) == "2"

    app.text_input(key="admin_key").set_value(world.admin_key)
    app.selectbox(key="promote-version").set_value("1")
    app.checkbox(key="force").check()
    app.button(key="promote").click().run()
    app.button(key="confirm-admin").click().run()
    assert "v1 promoted: forced by the operator" in texts(app)
    assert str(get_alias(world.client, MODEL, CHAMPION).version) == "1"
    assert str(get_alias(world.client, MODEL, PREVIOUS).version) == "2"
    ready = httpx.get(f"{world.url}/readyz").json()
    assert ready["adapter"] == "v1"  # the service swapped at once

    app.button(key="rollback").click().run()
    app.button(key="cancel-admin").click().run()  # cancelled: nothing moves
    assert str(get_alias(world.client, MODEL, CHAMPION).version) == "1"
    app.button(key="rollback").click().run()
    app.button(key="confirm-admin").click().run()
    assert "The champion is v2 again (was v1)." in texts(app)
    assert str(get_alias(world.client, MODEL, CHAMPION).version) == "2"
    assert world.admin_key not in texts(app)


# --- memory ---------------------------------------------------------------------------------


def test_memory_lists_searches_and_forgets_the_users_own(world: ConsoleWorld) -> None:
    def service_texts() -> list[str]:
        reply = httpx.get(f"{world.url}/v1/memories",
                          headers={"Authorization": f"Bearer {world.user_key}"})
        return [m["text"] for m in reply.json()["data"]]

    app = page("memory")
    table = app.dataframe[0].value
    assert set(MEMORIES) <= set(table["text"]) and "4321" not in "".join(table["text"])
    assert table["importance"].between(0, 1).all() and table["recency"].between(0.99, 1).all()
    app.text_input(key="memory-query").set_value("which tea do I drink").run()
    found = app.dataframe[0].value
    assert found.iloc[0]["text"] == MEMORIES[0] and found["score"].is_monotonic_decreasing
    target = found.iloc[0]["id"]
    app.selectbox(key="forget").set_value(target).run()
    app.button(key="forget-ask").click().run()
    assert "Forget \u201cI prefer green tea" in texts(app)
    app.button(key="forget-yes").click().run()
    assert "Forgotten." in texts(app)
    assert MEMORIES[0] not in service_texts() and MEMORIES[1] in service_texts()


# --- system and errors ----------------------------------------------------------------------


def test_system_shows_the_machine_the_services_metrics_and_health(world: ConsoleWorld) -> None:
    key = {"Authorization": f"Bearer {world.user_key}"}
    httpx.post(f"{world.url}/v1/chat/completions", headers=key, timeout=60, json={
        "model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    app = page("system")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["CPU"].endswith("%") and metrics["RAM"].endswith("GB")
    assert "GPU" in metrics or any(label.startswith("GPU ") for label in metrics)
    figures = parse_metrics(httpx.get(f"{world.url}/metrics").text)
    assert figures.tokens_per_second and figures.tokens_per_second > 0
    assert metrics["tokens/s (last generation)"] == f"{figures.tokens_per_second:.1f}"
    components = app.dataframe[0].value.set_index("component")["status"].to_dict()
    assert components == {"service": "ready", "model": "ok", "store": "ok", "memory": "ok",
                          "MLflow store": "ok"}
    latency = app.dataframe[1].value.set_index("route")
    assert latency.loc["POST /v1/chat/completions", "requests"] >= 1


@pytest.mark.parametrize("name", ["chat", "progress", "adapters", "memory", "system"])
def test_a_service_that_is_down_is_a_sentence_with_the_fix(world: ConsoleWorld,
                                                            name: str) -> None:
    app = page(None if name == "chat" else name, service_url="http://127.0.0.1:9")
    if name == "chat":
        app.chat_input(key="question").set_value(QUESTION).run()
    if name in ("chat", "memory", "system"):
        assert any("http://127.0.0.1:9 does not answer. Start it with `evolora serve"
                   in e.value for e in app.error), texts(app)
    assert not app.exception


def test_a_wrong_key_is_a_sentence_with_the_fix_and_is_never_shown(world: ConsoleWorld) -> None:
    app = page("memory", api_key="evk_not-a-real-key-at-all")
    assert any("refused the API key (invalid or revoked API key)" in e.value
               and "evolora keys create NAME" in e.value for e in app.error)
    assert "evk_not-a-real-key" not in texts(app) and not app.exception


# --- a real browser -------------------------------------------------------------------------

@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_a_real_browser_chats_and_sees_the_progress(world: ConsoleWorld,
                                                    tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with running_console(world.env, port) as url:
        driver = chromium(tmp_path / "profile")
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url)
            box = wait.until(ready.element_to_be_clickable(
                (By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
            box.send_keys(QUESTION, Keys.ENTER)
            wait.until(lambda d: "answered by v2" in d.find_element(By.TAG_NAME, "body").text)
            body = driver.find_element(By.TAG_NAME, "body").text
            assert ANSWER in body and "1 tool step" in body
            driver.save_screenshot(str(tmp_path / "chat.png"))
            driver.get(f"{url}/progress")
            wait.until(lambda d: "Decisions" in d.find_element(By.TAG_NAME, "body").text)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "canvas, svg.marks"))
            time.sleep(1)  # the charts' first paint
            body = driver.find_element(By.TAG_NAME, "body").text
            assert f"Cycle {world.running_cycle} is running" in body
            assert "stage 2 of 2: train g0-m0 (generalist) (4/10 steps)" in body
            assert "champion\nv2\ntest accuracy\n0.50" in body
            driver.save_screenshot(str(tmp_path / "progress.png"))
        finally:
            driver.quit()
    for name in ("chat.png", "progress.png"):
        shot = tmp_path / name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_the_console_command_keeps_a_key_in_the_environment_off_an_open_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("EVOLORA_API_KEY", "evk_secret-value-never-shown")
    result = CliRunner().invoke(app, ["console", "-c", "tiny", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "would hand the key in EVOLORA_API_KEY" in result.output
    assert "evk_secret" not in result.output
