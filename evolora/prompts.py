"""Prompts are data: each layer keeps its prompts in a YAML file beside its code.

    PROMPTS = load_prompts(Path(__file__).with_name("prompts.yaml"), ["system"])

A prompt file is a mapping of names to text (YAML block scalars keep every newline). A
missing file, a missing name or a value that is not text is refused at import, naming the
file and the name, so a broken edit never reaches a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and what is wrong."""


def load_prompts(path: Path, required: Iterable[str]) -> dict[str, str]:
    """The prompts in `path` by name; every name in `required` must be there as text."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PromptFileError(f"{path}: cannot be read as YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PromptFileError(f"{path}: the top level must map prompt names to text")
    problems = [f"{name}: missing" for name in required if name not in raw]
    problems += [f"{name}: must be text, got {type(value).__name__}"
                 for name, value in raw.items() if not isinstance(value, str)]
    if problems:
        raise PromptFileError(f"{path}: " + "; ".join(problems))
    return dict(raw)
