"""The cycles' records as the progress page draws them: the champion after each cycle
(overall, per level, per skill), each cycle's gate decision, and the cycle running now.

The primary source is MLflow: every cycle's parent run (tag `evolora.step` = cycle) carries
its CycleSummary as `cycle-summary.json`; the champion's per-skill scores are the tags of
its registry version. `mlruns/nights.json` (written by `evolora cycle --nights N`) adds its
columns, and any night MLflow does not have. The running cycle's stage and share done are
in `data/cycles/<id>/progress.json`, which its progress display keeps.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evolora.progress import PROGRESS_FILE
from evolora.tracking import EXPERIMENT_NAME
from evolora.vocabulary import CYCLE_SUMMARY_ARTIFACT, STEP_TAG
from tasks.records import CycleSummary
from tasks.registry import RegistryError, get_version, version_metrics

OVERALL = "test_accuracy"
NIGHTS_FILE = "nights.json"


@dataclass
class CycleRecord:
    """One finished cycle, as a row of the progress page."""

    cycle_id: str
    ended: datetime | None
    champion: float
    champion_hard: float
    champion_version: str | None
    promoted: bool
    source: str  # "mlflow" or "nights.json"
    summary: CycleSummary | None = None
    # The champion's test scores per level and skill (its registry version's tags).
    levels: dict[str, float] = field(default_factory=dict)
    skills: dict[str, float] = field(default_factory=dict)
    train_steps: int | None = None
    test_problems: int | None = None
    wall_s: float | None = None


def split_accuracies(metrics: dict[str, float], skills: list[str]
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """A version's `test_accuracy_*` metrics as (per level, per skill); skill x level and
    other metrics are left out."""
    levels, per_skill = {}, {}
    for key, value in metrics.items():
        if not key.startswith(f"{OVERALL}_"):
            continue
        suffix = key.removeprefix(f"{OVERALL}_")
        if suffix in skills:
            per_skill[suffix] = value
        elif not any(suffix.startswith(f"{skill}_") for skill in skills):
            levels[suffix] = value
    return levels, per_skill


class CycleHistory:
    """Reads the cycles' records from one MLflow store (summaries cached: they never change)."""

    def __init__(self, client: MlflowClient, model_name: str, skills: list[str]) -> None:
        self.client = client
        self.model_name = model_name
        self.skills = skills
        self._summaries: dict[str, CycleSummary] = {}

    def records(self, nights_path: Path | None = None) -> list[CycleRecord]:
        """Every finished cycle, oldest first: MLflow's, then nights.json's extra nights."""
        records = [r for r in (self._record(run) for run in self._cycle_runs()) if r]
        nights = read_nights(nights_path) if nights_path else []
        by_id = {r.cycle_id: r for r in records}
        for night in nights:
            known = by_id.get(str(night.get("cycle_id")))
            if known is not None:
                known.train_steps = night.get("train_steps")
                known.test_problems = night.get("test_problems")
                continue
            version = night.get("champion_version")
            record = CycleRecord(
                cycle_id=str(night.get("cycle_id")), ended=None,
                champion=float(night.get("champion", 0.0)),
                champion_hard=float(night.get("champion_hard", 0.0)),
                champion_version=str(version) if version is not None else None,
                promoted=bool(night.get("promoted")), source=NIGHTS_FILE,
                train_steps=night.get("train_steps"), test_problems=night.get("test_problems"),
                wall_s=night.get("wall_s"))
            self._add_champion_scores(record)
            records.append(record)
        # Cycle ids are their start times (YYYYMMDD-HHMMSS): their order is the nights'.
        return sorted(records, key=lambda r: r.cycle_id)

    def _cycle_runs(self) -> list[Any]:
        experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            return []
        return self.client.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.`{STEP_TAG}` = 'cycle'",
                                       order_by=["attributes.start_time ASC"],
                                       max_results=5000)

    def _record(self, run: Any) -> CycleRecord | None:
        summary = self._summary(run.info.run_id)
        if summary is None:  # running, or stopped before its end
            return None
        ended = run.info.end_time or run.info.start_time
        record = CycleRecord(
            cycle_id=summary.cycle_id,
            ended=datetime.fromtimestamp(ended / 1000, timezone.utc) if ended else None,
            champion=summary.champion, champion_hard=summary.champion_hard,
            champion_version=summary.champion_version, promoted=summary.promoted,
            source="mlflow", summary=summary, wall_s=summary.wall_s)
        self._add_champion_scores(record)
        return record

    def _summary(self, run_id: str) -> CycleSummary | None:
        if run_id in self._summaries:
            return self._summaries[run_id]
        names = {Path(a.path).name for a in self.client.list_artifacts(run_id)}
        if CYCLE_SUMMARY_ARTIFACT not in names:
            return None
        with tempfile.TemporaryDirectory() as folder:
            path = self.client.download_artifacts(run_id, CYCLE_SUMMARY_ARTIFACT, folder)
            summary = CycleSummary.model_validate_json(Path(path).read_text())
        self._summaries[run_id] = summary
        return summary

    def _add_champion_scores(self, record: CycleRecord) -> None:
        if not record.champion_version:
            return
        try:
            metrics = version_metrics(get_version(self.client, self.model_name,
                                                  record.champion_version))
        except (RegistryError, MlflowException):
            return  # a version deleted since: the summary's numbers still stand
        record.levels, record.skills = split_accuracies(metrics, self.skills)


def read_nights(path: Path) -> list[dict[str, Any]]:
    """The `cycles` of a nights.json, or nothing when it is missing or unreadable."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    cycles = raw.get("cycles") if isinstance(raw, dict) else None
    return [c for c in cycles if isinstance(c, dict)] if isinstance(cycles, list) else []


def accuracy_rows(records: list[CycleRecord]) -> list[dict[str, Any]]:
    """Long-form chart rows: one per cycle and series (overall, each level)."""
    rows = []
    for index, record in enumerate(records, start=1):
        series = {"overall": record.champion, "hard": record.champion_hard,
                  **{k: v for k, v in record.levels.items() if k != "hard"}}
        rows += [{"cycle": index, "cycle_id": record.cycle_id, "series": name,
                  "accuracy": value} for name, value in series.items()]
    return rows


def skill_rows(records: list[CycleRecord]) -> list[dict[str, Any]]:
    """Long-form chart rows: one per cycle and skill of the champion after it."""
    return [{"cycle": index, "cycle_id": record.cycle_id, "skill": skill, "accuracy": value}
            for index, record in enumerate(records, start=1)
            for skill, value in sorted(record.skills.items())]


def decision_rows(records: list[CycleRecord]) -> list[dict[str, Any]]:
    """One row per cycle: its challenger, the gate's verdict and reasons, the champion."""
    rows = []
    for record in reversed(records):  # newest first
        summary = record.summary
        rows.append({
            "cycle": record.cycle_id,
            "decision": "promoted" if record.promoted else "refused",
            "challenger": (f"{summary.challenger_id} (v{summary.registry_version}) "
                           f"{summary.challenger:.2f}") if summary else "",
            "champion": (f"v{record.champion_version} " if record.champion_version else "")
                        + f"{record.champion:.2f}",
            "why": "; ".join(summary.gate_reasons) if summary else "",
            "wall": f"{record.wall_s / 60:.0f} min" if record.wall_s else "",
        })
    return rows


@dataclass
class RunningCycle:
    """The progress file of the newest cycle, and whether its process still runs."""

    cycle_id: str
    snapshot: dict[str, Any]
    alive: bool

    @property
    def state(self) -> str:
        """running, done, failed, or stopped (its process is gone without a last word)."""
        state = str(self.snapshot.get("state", "running"))
        return "stopped" if state == "running" and not self.alive else state


def latest_cycle_progress(cycles_dir: Path) -> RunningCycle | None:
    """The newest cycle folder's progress file, or None when no cycle has one."""
    if not cycles_dir.is_dir():
        return None
    for folder in sorted(cycles_dir.iterdir(), reverse=True):
        path = folder / PROGRESS_FILE
        if not path.is_file():
            continue
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = snapshot.get("pid")
        return RunningCycle(folder.name, snapshot, isinstance(pid, int) and _alive(pid))
    return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

