"""Config problems as one line each: the dotted key, what is wrong, and the fix."""

from __future__ import annotations

import difflib
import os
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

ENV_PREFIX = "EVOLORA_"


def describe_env_error(exc: SettingsError) -> str:
    cause = f": {exc.__cause__}" if exc.__cause__ else ""
    section = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
    prefix = f"{ENV_PREFIX}{section.upper()}"
    names = sorted(n for n in os.environ if n.upper().startswith(prefix)) if section else []
    where = f" (set: {', '.join(names)})" if names else ""
    return (
        f"{exc}{cause}{where} (fix: lists and mappings in {ENV_PREFIX}* variables are JSON, "
        f"e.g. {ENV_PREFIX}TRAIN__TARGET_MODULES='[\"q_proj\", \"v_proj\"]')"
    )


def describe_validation_errors(exc: ValidationError) -> list[str]:
    """One line per pydantic error: the dotted key, what is wrong, and the fix."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        # A secret's bad value is still a secret: never echo it into a terminal or a log.
        secret = _is_secret_key(error["loc"])
        echo = error["type"] not in _NO_INPUT_ECHO
        got = " (got ***)" if echo and secret else f" (got {error.get('input')!r})" if echo else ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {message}{got}{_fix_hint(error)}")
    return problems


def _is_secret_key(loc: tuple[Any, ...]) -> bool:
    return any(isinstance(p, str) and p.endswith(("api_key", "password", "token")) for p in loc)


# Errors whose input is the whole section (model validators) or absent: not worth echoing.
_NO_INPUT_ECHO = {"extra_forbidden", "missing", "value_error"}


def _fix_hint(error: Any) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        siblings = _known_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), siblings, n=1)
        if close:
            return f" (fix: did you mean `{close[0]}`?)"
        return f" (fix: remove it; known keys here: {', '.join(sorted(siblings))})"
    if kind == "missing":
        return " (fix: add this key)"
    if kind == "value_error":
        return ""  # our validators' messages already say what to change
    if any(isinstance(p, int) for p in loc):
        # An item of a list: a variable can only replace the whole list (as JSON).
        return " (fix: change it in the YAML)"
    env_name = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
    return f" (fix: change it in the YAML or set {env_name})"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    from evolora.settings import Settings  # the settings module imports this one

    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        inner = getattr(annotation, "__args__", (annotation,))
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
