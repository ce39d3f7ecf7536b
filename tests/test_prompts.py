"""Prompts are data files: each loads, and a broken one is refused naming file and prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from evolora.paths import PROJECT_ROOT
from evolora.prompts import PromptFileError, load_prompts


def test_every_prompt_file_loads_as_text() -> None:
    files = sorted(PROJECT_ROOT.glob("*/**/prompts.yaml"))
    assert {str(p.relative_to(PROJECT_ROOT)) for p in files} >= {
        "agent/prompts.yaml", "tasks/evolve/prompts.yaml", "tasks/data/prompts.yaml"}
    for path in files:
        prompts = load_prompts(path, [])
        assert prompts and all(text.strip() for text in prompts.values())


def test_the_breeding_prompts_fill_their_placeholders() -> None:
    from tasks.evolve.agents import BREEDER_PROMPT

    filled = BREEDER_PROMPT.format(n_children=2, types="linear, cat", unequal="cat")
    assert "exactly 2 children" in filled and '{"children": [{"parents"' in filled


def test_a_broken_prompt_file_names_the_file_and_the_prompt(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text("system: 3\nother: fine\n")
    with pytest.raises(PromptFileError, match=r"prompts.yaml: critic: missing; system: must "
                                              r"be text, got int"):
        load_prompts(path, ["system", "critic"])
    path.write_text("- a list\n")
    with pytest.raises(PromptFileError, match="must map prompt names to text"):
        load_prompts(path, ["system"])
