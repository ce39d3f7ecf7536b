"""structlog set-up: readable console lines for a person, JSON lines with `--log-json`.

Every event passes through `redact_secrets`, so an API key or token that lands in an event
by mistake is logged as `***` rather than in clear.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# A key whose value is a secret: `api_key`, `llm_api_key`, `hf_token`, `Authorization`...
# Matched on the key's last `_`/`-` separated word(s), so `max_new_tokens` or `token_count`
# stay readable.
SECRET_KEY_PATTERN = re.compile(
    r"(?:^|[_\-])(?:(?:api|secret|private|access)[_\-]?keys?|token|secrets?|passwords?"
    r"|passwd|authorization)$",
    re.I,
)
# Secrets inside free text, e.g. an error message that quotes a header or a config line:
# `Bearer <token>`, `Authorization: <value>`, `api_key=<value>`, and evolora keys `evk_...`.
SECRET_VALUE_PATTERN = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=\-]+"
    r"|(authorization[\"']?\s*[=:]\s*[\"']?(?:[A-Za-z]+\s+)?)[^\s\"',;}]+"
    r"|((?<![A-Za-z0-9])(?:api[_\-]?key|token|secret|password|passwd)[\"']?\s*[=:]\s*[\"']?)"
    r"[^\s\"',;&}]+"
    r"|\bevk_[A-Za-z0-9_\-]{8,}",
    re.I,
)
MASK = "***"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _mask_text(text: str) -> str:
    return SECRET_VALUE_PATTERN.sub(
        lambda m: (m.group(1) or m.group(2) or m.group(3) or "") + MASK, text
    )


def _redact(value: Any, key: str = "") -> Any:
    if key and SECRET_KEY_PATTERN.search(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask values under secret-looking keys and tokens inside text."""
    return {key: _redact(value, key) for key, value in event_dict.items()}


def configure_logging(json_output: bool = False, level: str = "INFO") -> None:
    """Route structlog (and the stdlib loggers of the stack) to stderr in one format."""
    if level.upper() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are rendered to text first so that redaction covers them too.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, handlers=[_CurrentStderrHandler()], force=True)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _CurrentStderrHandler(logging.StreamHandler):
    """A stderr handler that looks up `sys.stderr` at each record, not once.

    A stream captured at set-up time (a test runner's, a closed CLI runner's) would make
    every later stdlib log line fail with "I/O operation on closed file".
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Looked up per call rather than bound once: whoever replaced sys.stderr since
    # (pytest's capture, Click's CliRunner) gets the lines, and a closed stream is never used.
    return structlog.PrintLogger(file=sys.stderr)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A named structlog logger."""
    return structlog.get_logger(name)
