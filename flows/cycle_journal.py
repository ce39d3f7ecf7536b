"""A cycle's typed records on disk, so a cycle killed at any point resumes where it stopped.

Every finished step (the data splits, a trained or bred member, an evaluation, a
generation's plan, the gate's verdict) is kept in `data/cycles/<id>/state.json`, written
atomically (temp file + rename) and only after the step's own files are complete. Running
the cycle again reads the journal and skips what is done: finished adapters are never
retrained. The journal holds the same records the flow passes between its tasks
(`tasks.records`), so what is resumed is exactly what was produced.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from evolora.logs import get_logger
from tasks.records import (
    CycleSummary,
    DataSplits,
    GenerationPlan,
    Member,
    Promotion,
    Scores,
    SelfAttemptReport,
    Trunk,
)

log = get_logger(__name__)

STATE_FILE = "state.json"
JOURNAL_FORMAT = 2


class CycleJournal(BaseModel):
    """The record of one cycle: its id, MLflow parent run, and every finished step."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    format: Literal[2] = JOURNAL_FORMAT
    cycle_id: str
    status: Literal["running", "done"] = "running"
    parent_run_id: str | None = None
    started_at: float = Field(default_factory=time.time)
    # Seconds worked by all runs of this cycle, up to each one's last saved step (a killed
    # run's time after that is lost, as is its unsaved work).
    work_s: float = 0.0
    # How many times a run picked this cycle up after an earlier one stopped unfinished.
    resumes: int = 0
    # The cycles finished before this one: tonight's training problems are drawn with it.
    night: int = 0
    # Tonight's generated and harvested rows, before the champion's attempts and the mix.
    template_data: DataSplits | None = None
    self_rows: Path | None = None
    self_report: SelfAttemptReport | None = None
    self_checked: bool = False
    # The final splits: `train` is tonight's mix.
    data: DataSplits | None = None
    base_test: Scores | None = None
    # The champion re-scored on this cycle's test set, when the registry had no outcomes of
    # it on this test set (the frozen test set changed since it was promoted).
    champion_test: Scores | None = None
    champion_checked: bool = False
    # Trained and bred members by id, in the order they were made, with their scores.
    members: dict[str, Member] = Field(default_factory=dict)
    # The registry champion the generalist continues (warm start), decided once per cycle.
    warm_start: Member | None = None
    warm_start_checked: bool = False
    # The trunk (an earlier night's generalist before its decay) tonight's generalist
    # continues, decided with the warm start; None: it continues `warm_start`, if any.
    trunk: Trunk | None = None
    plans: dict[int, GenerationPlan] = Field(default_factory=dict)
    promotion: Promotion | None = None
    summary: CycleSummary | None = None

    _folder: Path = PrivateAttr()
    _work_before_s: float = PrivateAttr(0.0)
    _opened: float = PrivateAttr(default_factory=time.monotonic)
    # When the journal was last written before this run opened it (a resumed cycle's stop).
    _saved_at: float | None = PrivateAttr(None)

    @classmethod
    def open(cls, cycles_dir: Path, *, new: bool = False) -> CycleJournal:
        """Resume the latest unfinished cycle, or start a new one (always, with `new`)."""
        cycles_dir.mkdir(parents=True, exist_ok=True)
        if not new:
            unfinished = [j for j in (cls.load(p) for p in sorted(cycles_dir.iterdir())
                                      if (p / STATE_FILE).is_file())
                          if j is not None and j.status != "done"]
            if unfinished:
                return unfinished[-1]
        cycle_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = cycles_dir / cycle_id
        suffix = 1
        while folder.exists():
            folder = cycles_dir / f"{cycle_id}-{suffix}"
            suffix += 1
        folder.mkdir(parents=True)
        journal = cls(cycle_id=folder.name, night=cls.finished_cycles(cycles_dir))
        journal._folder = folder
        journal.save()
        return journal

    @classmethod
    def load(cls, folder: Path) -> CycleJournal | None:
        """The journal in `folder`, or None for one written by an older evolora (not
        resumable: its steps were untyped; the cycle starts anew and says so)."""
        raw = json.loads((folder / STATE_FILE).read_text())
        if raw.get("format") != JOURNAL_FORMAT:
            if raw.get("status") != "done":
                log.warning("cycle.journal_too_old", folder=str(folder),
                            fix="it cannot be resumed; a new cycle starts instead")
            return None
        try:
            journal = cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"{folder / STATE_FILE} is not a valid cycle journal: {exc}; "
                             "move the folder away to start a new cycle") from None
        journal._folder = folder
        journal._work_before_s = journal.work_s
        journal._saved_at = (folder / STATE_FILE).stat().st_mtime
        return journal

    @staticmethod
    def finished_cycles(cycles_dir: Path) -> int:
        """How many cycles in `cycles_dir` finished."""
        count = 0
        for state in cycles_dir.glob(f"*/{STATE_FILE}"):
            try:
                count += json.loads(state.read_text()).get("status") == "done"
            except (OSError, ValueError):
                continue
        return count

    @staticmethod
    def harvest_watermark(cycles_dir: Path) -> float | None:
        """Where the last finished cycle's harvest stopped: the next one starts there."""
        if not cycles_dir.is_dir():
            return None
        for folder in sorted(cycles_dir.iterdir(), reverse=True):
            if not (folder / STATE_FILE).is_file():
                continue
            raw: dict[str, Any] = json.loads((folder / STATE_FILE).read_text())
            # Format 1 kept the data record under steps["data"].
            data = raw.get("data") or raw.get("steps", {}).get("data") or {}
            if raw.get("status") == "done" and data.get("harvest"):
                return data["harvest"].get("watermark")
        return None

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def adapters_dir(self) -> Path:
        return self._folder / "adapters"

    @property
    def resumed(self) -> bool:
        """Whether an earlier run of this cycle finished any step."""
        return self.template_data is not None or self.data is not None

    def count_resume(self) -> float | None:
        """Record that this run resumes the cycle; returns the seconds since the stopped run
        last saved a step (how long the cycle was down), None when unknown."""
        self.update(resumes=self.resumes + 1)
        return None if self._saved_at is None else round(time.time() - self._saved_at, 1)

    @property
    def worked_s(self) -> float:
        """Seconds this cycle has worked, over all its runs (resumes included)."""
        return self._work_before_s + time.monotonic() - self._opened

    def keep(self, member: Member) -> Member:
        """Record a member (new, or with new scores) durably; returns it."""
        self.members[member.id] = member
        self.save()
        return member

    def update(self, **fields: Any) -> None:
        """Set finished steps' records (validated) and save."""
        for name, value in fields.items():
            setattr(self, name, value)
        self.save()

    def save(self) -> None:
        """Write the journal atomically: a crash leaves the old file or the new, never half."""
        self.work_s = round(self.worked_s, 1)
        handle, tmp = tempfile.mkstemp(dir=self._folder, prefix=".state-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            out.write(self.model_dump_json(indent=2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._folder / STATE_FILE)
