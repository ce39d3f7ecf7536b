"""Logging: secrets never reach stderr in clear, in console lines or JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner

from cli.main import app
from evolora.logs import MASK, configure_logging, get_logger, redact_secrets

SECRETS = ["sk-live-123456", "xyz.abc-987", "evk_0123456789abcdef", "hunter2pass"]


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """These tests reconfigure logging globally; later tests get structlog's defaults back."""
    yield
    structlog.reset_defaults()


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
