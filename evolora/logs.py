"""Logging set-up: readable lines for a person, JSON lines with `--log-json`, and a log file.

Our structlog events and the libraries' stdlib records go through the same handlers: the
terminal shows our events and errors; a long command's log file (`configure_logging(...,
log_file=)`, then `quiet_libraries()`) also gets the libraries' records, Python warnings and
our DEBUG events. Every event, ours or a library's, passes through `redact_secrets`, so an
API key or token that lands in one by mistake is logged as `***` rather than in clear.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
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


# Library loggers that bring their own console handler (found by importing the stack and
# listing handlers), so their lines would reach the terminal whatever the root logger does.
# `quiet_libraries` routes them through the root's handlers: into the log file. The rest
# (peft, trl, accelerate, bitsandbytes, prefect, chromadb, ...) propagate to the root anyway.
LIBRARY_LOGGERS = ("transformers", "datasets", "evaluate", "huggingface_hub", "mlflow",
                   "alembic", "sqlalchemy.engine", "autogen.oai.client", "autogen.oai.cohere")
# Request-by-request chatter, kept out of the log file too.
CHATTY_LOGGERS = ("httpx", "httpcore", "urllib3", "alembic")
LOG_FILE_BYTES = 5 * 2**20
LOG_FILE_BACKUPS = 3
_EVENTS_LOGGER = "evolora.events"


def configure_logging(json_output: bool = False, level: str = "INFO",
                      log_file: Path | None = None) -> None:
    """Our events to stderr at `level`; with `log_file`, everything else goes to that file.

    Without a file, library warnings show on stderr as Python would show them. With one
    (the long commands), stderr keeps our own events and library errors, and the file gets
    our events down to DEBUG, library records from INFO and Python warnings, in the same
    format (JSON lines with `json_output`).
    """
    if level.upper() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    terminal_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are rendered to text first so that redaction covers them too.
            structlog.processors.format_exc_info,
            redact_secrets,
            _to_stdlib,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if log_file else terminal_level),
        logger_factory=_events_logger,
        cache_logger_on_first_use=False,
    )
    logging.getLogger(_EVENTS_LOGGER).setLevel(logging.DEBUG)
    terminal = TerminalHandler(terminal_level, libraries_level=logging.ERROR if log_file
                               else logging.WARNING, hide_prefect=log_file is not None)
    terminal.setFormatter(_formatter(json_output, colors=sys.stderr.isatty()))
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
        to_file.setFormatter(_formatter(json_output, colors=False))
        handlers.append(to_file)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO if log_file else logging.WARNING)
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # Deprecation and user warnings become records: to the file, not the terminal.
    logging.captureWarnings(True)


def quiet_libraries() -> None:
    """Progress bars off, and the libraries' own stderr handlers replaced by ours.

    Imports the libraries a long command uses anyway (transformers, datasets, mlflow), so
    that their handlers exist now and can be taken off.
    """
    import datasets
    import huggingface_hub.utils
    import mlflow  # noqa: F401 (its import installs the handler taken off below)
    import transformers.utils.logging as transformers_logging

    datasets.disable_progress_bars()  # save_to_disk, map, filter, TRL's tokenisation
    transformers_logging.disable_progress_bar()  # "Loading weights", generation
    huggingface_hub.utils.disable_progress_bars()
    # MLflow reads this per download ("Downloading artifacts" bars).
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in library.handlers[:]:
            if type(handler) is logging.StreamHandler:  # not NullHandler, not a file
                library.removeHandler(handler)
        library.propagate = True
        # ag2 adds its stdout handler at import only to a logger that has none, and it is
        # imported later (the breeding agents): a NullHandler now keeps it off.
        if not library.handlers:
            library.addHandler(logging.NullHandler())


class TerminalHandler(logging.StreamHandler):
    """stderr for a person: our events from `level` up, other libraries' from theirs.

    Looks up `sys.stderr` at each record, not once: a stream captured at set-up time (a test
    runner's, a closed CLI runner's) would make every later line fail with "I/O operation on
    closed file", and a live progress display replaces sys.stderr while it runs.
    """

    def __init__(self, level: int, *, libraries_level: int = logging.WARNING,
                 hide_prefect: bool = False) -> None:
        super().__init__(sys.stderr)
        self.events_level = level
        self.libraries_level = libraries_level
        # Prefect's flow and task run lines repeat what our events and the progress show;
        # a failed run still reaches the terminal as the command's own error.
        self.hide_prefect = hide_prefect

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if getattr(record, "evolora_event", False):
            return record.levelno >= self.events_level
        if self.hide_prefect and record.name.split(".")[0] == "prefect":
            return False
        return record.levelno >= self.libraries_level


def _to_stdlib(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    # The last structlog processor: hand the event to stdlib logging, marked as ours, so each
    # handler renders it (terminal and file alike) and filters ours apart from libraries'.
    args, kwargs = structlog.stdlib.ProcessorFormatter.wrap_for_formatter(
        logger, method, dict(event_dict))
    kwargs["extra"]["evolora_event"] = True
    return args, kwargs


def _formatter(json_output: bool, colors: bool) -> logging.Formatter:
    renderer: Any = (structlog.processors.JSONRenderer() if json_output
                     else structlog.dev.ConsoleRenderer(colors=colors))
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        # A library record becomes an event like ours: level, time, where from, redacted.
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.add_logger_name,
            # Prefect's run loggers name the flow or task run in these record attributes.
            structlog.stdlib.ExtraAdder(allow=("flow_run_name", "task_run_name")),
            structlog.processors.format_exc_info,
            redact_secrets,
        ],
    )


def _events_logger(*_args: Any) -> logging.Logger:
    return logging.getLogger(_EVENTS_LOGGER)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A named structlog logger."""
    return structlog.get_logger(name)
