"""Logging: secrets never reach stderr in clear; library noise goes to the log file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner

from cli.main import app
from evolora.logs import MASK, configure_logging, get_logger, quiet_libraries, redact_secrets

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What library output looks like on a terminal: progress bars, warnings, Prefect's lines.
NOISE = ("Saving the dataset", "Map:", "it/s]", "examples/s]", "%|", "Warning", "warnings.warn",
         "Flow run", "Task run", "Finished in state", "temporary server",
         "gemm_4bit_forward")

SECRETS = ["sk-live-123456", "xyz.abc-987", "evk_0123456789abcdef", "hunter2pass"]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """These tests reconfigure logging globally; later tests get the logging they had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def redact(**event: Any) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", event))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_secret_keys_are_masked_at_any_depth() -> None:
    event = redact(event="call", api_key="sk-live-123456", llm_api_key="sk-2",
                   headers={"Authorization": "Bearer xyz", "Accept": "json"},
                   backends=[{"kind": "openai", "api_key": "sk-3"}], hf_token="hf_abc",
                   password=None)

    assert event["api_key"] == MASK
    assert event["llm_api_key"] == MASK
    assert event["hf_token"] == MASK
    assert event["headers"] == {"Authorization": MASK, "Accept": "json"}
    assert event["backends"] == [{"kind": "openai", "api_key": MASK}]
    assert event["password"] is None  # nothing to hide: stays as it is
    assert event["event"] == "call"


def test_counts_and_names_that_merely_contain_token_stay_readable() -> None:
    event = redact(event="generate", max_new_tokens=128, prompt_tokens=40, token_count=3,
                   tokenizer="smollm2")
    assert event == {"event": "generate", "max_new_tokens": 128, "prompt_tokens": 40,
                     "token_count": 3, "tokenizer": "smollm2"}


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("request failed: api_key=sk-live-123456 rejected", "api_key=*** rejected"),
        ("request failed: API-KEY: sk-live-123456", "API-KEY: ***"),
        ("header Authorization: Bearer xyz.abc-987 was sent", "Authorization: Bearer *** was"),
        ('headers {"Authorization": "Bearer xyz.abc-987"}', '"Bearer ***"}'),
        ("authorization=Basic hunter2pass", "authorization=Basic ***"),
        ("user key evk_0123456789abcdef revoked", "user key *** revoked"),
        ("login with password: hunter2pass, retrying", "password: ***, retrying"),
        ('{"token": "hunter2pass"}', '{"token": "***"}'),
    ],
)
def test_secrets_inside_message_text_are_masked(text: str, masked: str) -> None:
    event = redact(event=text, error=text)
    for value in (event["event"], event["error"]):
        assert masked in value
        assert not any(secret in value for secret in SECRETS)


def test_ordinary_text_is_untouched() -> None:
    text = "trained rank=16 max_new_tokens=128 tokenizer=smollm2 on 2 cores: evk_short"
    assert redact(event=text)["event"] == text


def test_json_output_is_redacted_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_output=True)
    log = get_logger("test.logs")

    log.info("calling teacher with api_key=sk-live-123456", url="http://127.0.0.1:11434",
             api_key="sk-live-123456", attempt=1)
    log.warning("got 401 for Authorization: Bearer xyz.abc-987", key="evk_0123456789abcdef")

    captured = capsys.readouterr()
    assert captured.out == ""  # logs never mix with a command's output
    first, second = json_lines(captured.err)
    assert first["event"] == "calling teacher with api_key=***"
    assert first["api_key"] == MASK
    assert (first["level"], first["attempt"], first["url"]) == ("info", 1, "http://127.0.0.1:11434")
    assert first["timestamp"].endswith("Z")
    assert second["level"] == "warning"
    assert second["event"] == "got 401 for Authorization: Bearer ***"
    assert second["key"] == MASK
    assert not any(secret in captured.err for secret in SECRETS)


def test_tracebacks_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_output=True)
    try:
        raise ConnectionError("401 Unauthorized for Authorization: Bearer xyz.abc-987")
    except ConnectionError:
        get_logger("test.logs").exception("teacher.failed")

    (line,) = json_lines(capsys.readouterr().err)
    assert "ConnectionError: 401 Unauthorized for Authorization: Bearer ***" in line["exception"]
    assert "xyz.abc-987" not in json.dumps(line)


def test_console_output_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_output=False)
    get_logger("test.logs").info("using evk_0123456789abcdef", password="hunter2pass")

    err = capsys.readouterr().err
    assert "using ***" in err
    assert "password=***" in err
    assert not any(secret in err for secret in SECRETS)


def test_level_filters_events(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_output=True, level="warning")
    log = get_logger("test.logs")
    log.info("hidden")
    log.warning("shown")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["shown"]


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown log level 'loud'.*DEBUG, INFO, WARNING"):
        configure_logging(level="loud")


def test_cli_log_json_switches_to_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    result = CliRunner().invoke(app, ["--log-json", "config", "--config", "tiny"])
    assert result.exit_code == 0, result.output

    get_logger("test.logs").info("after the command", api_key="sk-live-123456")

    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "after the command"
    assert line["api_key"] == MASK


def test_logging_still_works_after_a_cli_command_finished(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The CLI configures logging while Click's runner has replaced sys.stderr; that stream is
    # closed afterwards, and a logger bound to it would raise on the next event.
    result = CliRunner().invoke(app, ["config", "--config", "tiny"])
    assert result.exit_code == 0, result.output

    get_logger("test.logs").warning("still.logging")

    assert "still.logging" in capsys.readouterr().err


def test_with_a_log_file_library_output_goes_there_and_not_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers.utils.logging as transformers_logging

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # restored after
    log_file = tmp_path / "logs" / "evolora.log"
    configure_logging(log_file=log_file)
    quiet_libraries()
    import autogen.oai.client  # noqa: F401 (ag2, imported later than this on a real run)

    log = get_logger("test.logs")

    log.debug("our.debug.detail")
    log.info("our.info.event", step=3)
    transformers_logging.get_logger("transformers.modeling_utils").warning("tied weights note")
    logging.getLogger("datasets.arrow_dataset").warning("datasets cache note")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: no kernels")
    logging.getLogger("prefect.flow_runs").info("Beginning flow run 'quiet-crow'")
    logging.getLogger("prefect.task_runs").error("Task run failed: retries are exhausted")
    warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
    logging.getLogger("mlflow.store").error("tracking store unreachable")
    logging.getLogger("autogen.oai.client").warning("Model smollm2 is not found")
    logging.getLogger("httpx").warning("retrying with Authorization: Bearer xyz.abc-987")
    for handler in logging.getLogger().handlers:
        handler.flush()

    out, err = capsys.readouterr()
    assert out == ""
    assert "our.info.event" in err and "step=3" in err
    assert "tracking store unreachable" in err  # a library's error still shows
    for hidden in ("our.debug.detail", "tied weights note", "datasets cache note",
                   "gemm_4bit_forward", "quiet-crow", "retries are exhausted", "deprecated",
                   "smollm2 is not found"):
        assert hidden not in err
    written = log_file.read_text()
    for line in ("our.debug.detail", "our.info.event", "tied weights note",
                 "datasets cache note", "gemm_4bit_forward", "Beginning flow run 'quiet-crow'",
                 "retries are exhausted", "FutureWarning: `is_gradient_checkpointing`",
                 "tracking store unreachable", "smollm2 is not found"):
        assert line in written
    assert "[transformers.modeling_utils]" in written  # where a library line came from
    assert "Authorization: Bearer ***" in written  # library lines are redacted too
    assert "xyz.abc-987" not in written


def test_without_a_log_file_library_warnings_still_show(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    logging.getLogger("datasets.arrow_dataset").warning("datasets cache note")
    logging.getLogger("datasets.arrow_dataset").info("datasets info")
    get_logger("test.logs").debug("our.debug.detail")

    err = capsys.readouterr().err
    assert "datasets cache note" in err
    assert "datasets info" not in err and "our.debug.detail" not in err


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOLORA_", "PREFECT_"))}
    # A fresh Prefect home (its database is migrated on first use: slow on a busy CPU).
    env.update(PYTHONPATH=str(PROJECT_ROOT), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               EVOLORA_PATHS__DATA_DIR=str(tmp_path / "data"),
               EVOLORA_PATHS__MLRUNS_DIR=str(tmp_path / "mlruns"))
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def test_data_generate_prints_no_library_noise_and_says_where_the_log_is(
    tmp_path: Path,
) -> None:
    done = _run(["-m", "cli.main", "data", "generate", "-c", "tiny"], tmp_path)

    assert done.returncode == 0, done.stderr
    log_file = tmp_path / "data" / "logs" / "evolora.log"
    lines = done.stderr.splitlines()
    assert lines[0] == f"full log: {log_file}"
    assert any("data.ready" in line for line in lines)  # our own events stay
    for noise in NOISE:
        assert noise not in done.stderr, f"{noise!r} on the terminal:\n{done.stderr}"
    assert "train" in done.stdout  # the command's result, on stdout
    assert "data.ready" in log_file.read_text()


QUIET_FLOW = """
import sys
from pathlib import Path

from evolora.logs import configure_logging

configure_logging(log_file=Path(sys.argv[1]))

from prefect import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@flow(name="quiet-flow")
def quiet_flow() -> int:
    return double(21)


print(quiet_flow())
"""


@pytest.mark.server
def test_prefect_run_lines_go_to_the_log_file_not_the_terminal(tmp_path: Path) -> None:
    log_file = tmp_path / "evolora.log"
    done = _run(["-c", QUIET_FLOW, str(log_file)], tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
    assert done.stderr == ""
    written = log_file.read_text()
    assert "Beginning flow run" in written
    assert "Finished in state Completed()" in written
    assert "task_run_name=double-" in written
