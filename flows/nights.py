"""Many nights in one command: the champion after each consecutive cycle, in one file.

`evolora cycle --nights N` runs N cycles as the nightly schedule would (harvest, warm start
from the last champion, gate) and keeps `mlruns/nights.json` up to date after each one, so
a run stopped on night 4 still shows nights 1 to 3:

    {"cycles": [{"cycle_id", "champion", "champion_hard", "champion_version", "promoted",
                 "test_problems", "train_steps", "wall_s", ...}, ...]}
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.records import CycleSummary


class Night(BaseModel):
    """One night: the champion's test accuracy after its gate, and what the night cost."""

    cycle_id: str
    champion: float
    champion_hard: float
    champion_version: str | None
    promoted: bool
    test_problems: int
    train_steps: int
    wall_s: float
    challenger: float
    # Optimizer steps the trunk had behind it after this night (0: no trunk).
    trunk_steps: int = 0
    champion_continuity: float | None = None
    self_yield: float | None = None
    # The champion per level, skill and skill x level ("hard", "units_hard").
    champion_groups: dict[str, float] = Field(default_factory=dict)
    gate_reasons: list[str] = Field(default_factory=list)


class NightsRecord(BaseModel):
    """The nights of one `--nights` run, written to `path` after each."""

    path: Path = Field(exclude=True)
    cycles: list[Night] = Field(default_factory=list)

    def __init__(self, path: Path, **data: object) -> None:
        super().__init__(path=path, **data)

    def add(self, summary: CycleSummary, wall_s: float) -> Night:
        """Record a finished night and rewrite the file (atomically)."""
        night = Night(
            cycle_id=summary.cycle_id, champion=summary.champion,
            champion_hard=summary.champion_hard, champion_version=summary.champion_version,
            promoted=summary.promoted, test_problems=summary.test_problems,
            train_steps=summary.train_steps, wall_s=round(wall_s, 1),
            challenger=summary.challenger, trunk_steps=summary.trunk_steps,
            champion_continuity=summary.champion_continuity,
            self_yield=summary.self_yield, champion_groups=summary.champion_groups,
            gate_reasons=summary.gate_reasons)
        self.cycles.append(night)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".nights-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            out.write(self.model_dump_json(indent=2))
        os.replace(tmp, self.path)
        return night
