"""A cycle's progress on disk, so a cycle killed at any point resumes where it stopped.

Every finished step (data, a trained or bred adapter, an evaluation, a generation's plan)
is recorded in `data/cycles/<id>/state.json`, written atomically (temp file + rename), and
only after the step's own files are complete. Starting the cycle again reads the record
and skips what is done: finished adapters are never retrained.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


@dataclass
class CycleState:
    """The record of one cycle: its id, MLflow parent run, and the results of each step."""

    cycle_id: str
    folder: Path
    status: str = "running"
    parent_run_id: str | None = None
    started_at: float = field(default_factory=time.time)
    steps: dict[str, Any] = field(default_factory=dict)
    # Seconds worked by earlier runs of this cycle, up to each one's last saved step (a
    # killed run's time after that is lost, as is its unsaved work).
    work_before_s: float = 0.0
    _opened: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def open(cls, cycles_dir: Path, *, new: bool = False) -> CycleState:
        """Resume the latest unfinished cycle, or start a new one (always, with `new`)."""
        cycles_dir.mkdir(parents=True, exist_ok=True)
        if not new:
            unfinished = [s for s in (cls.load(p) for p in sorted(cycles_dir.iterdir())
                                      if (p / STATE_FILE).is_file())
                          if s.status != "done"]
            if unfinished:
                return unfinished[-1]
        cycle_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = cycles_dir / cycle_id
        suffix = 1
        while folder.exists():
            folder = cycles_dir / f"{cycle_id}-{suffix}"
            suffix += 1
        folder.mkdir(parents=True)
        state = cls(folder.name, folder)
        state.save()
        return state

    @classmethod
    def load(cls, folder: Path) -> CycleState:
        data = json.loads((folder / STATE_FILE).read_text())
        return cls(data["cycle_id"], folder, data["status"], data.get("parent_run_id"),
                   data["started_at"], data.get("steps", {}), data.get("work_s", 0.0))

    @staticmethod
    def last_harvest_watermark(cycles_dir: Path) -> float | None:
        """Where the last finished cycle's harvest stopped: the next one starts there."""
        if not cycles_dir.is_dir():
            return None
        for folder in sorted(cycles_dir.iterdir(), reverse=True):
            if (folder / STATE_FILE).is_file():
                state = CycleState.load(folder)
                data = state.steps.get("data") or {}
                if state.status == "done" and data.get("harvest"):
                    return data["harvest"].get("watermark")
        return None

    @property
    def resumed(self) -> bool:
        return bool(self.steps)

    @property
    def work_s(self) -> float:
        """Seconds this cycle has worked, over all its runs (resumes included)."""
        return self.work_before_s + time.monotonic() - self._opened

    def done(self, step: str) -> Any | None:
        """The recorded result of `step`, or None if it has not finished."""
        return self.steps.get(step)

    def record(self, step: str, result: Any) -> Any:
        """Record a finished step's (JSON-able) result durably; returns the result."""
        self.steps[step] = result
        self.save()
        return result

    def save(self) -> None:
        data = {"cycle_id": self.cycle_id, "status": self.status,
                "parent_run_id": self.parent_run_id, "started_at": self.started_at,
                "work_s": round(self.work_s, 1), "steps": self.steps}
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=".state-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2, default=str)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.folder / STATE_FILE)
