"""The nights as one training run: the trunk (a warmup-stable-decay schedule across nights).

Each night used to train its generalist on its own schedule (warm-up, cosine to zero) from
the decayed champion: at the full rate one night moved as far as the champion's whole
training had and unlearned a skill, at a third of it the two-step plans stopped
generalising, and five 52-step nights left the champion at 0.175 while one 280-step run
on the same data scored 0.671 (docs/history.md, 2026-12-07). With a trunk, the generalist
trains at the stable rate; before it decays, a callback keeps its adapter and optimizer
state (`TrunkCallback`) in the cycle's folder, and the rest of the run is the decay that
makes tonight's candidate. The next night continues the trunk, not the candidate: at the
same rate, with Adam's moments intact, no warm-up. Across nights the trunk is one
constant-rate run, and each night's candidate is that run cooled down, which is what one
long warmup-stable-decay training would give at that many steps (the WSD schedule of
MiniCPM, Hu et al. 2024; Hägele et al. 2024 found it matches cosine at each length).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from evolora.logs import get_logger
from evolora.models import sha256_file
from tasks.records import Trunk

log = get_logger(__name__)

TRUNK_DIR = "trunk"
TRUNK_FILE = "trunk.json"
OPTIMIZER_FILE = "optimizer.pt"
TRUNK_FILES = ("adapter_config.json", "adapter_model.safetensors", OPTIMIZER_FILE)


@dataclass(frozen=True)
class WsdSchedule:
    """One night's share of the run: `decay_steps` at the end cool the candidate down; the
    state before them is written to `save_to` as the next trunk. `resume`: the trunk this
    night continues (its weights, optimizer state and step count), None on the first."""

    decay_steps: int
    save_to: Path
    cycle_id: str
    base_model_sha256: str
    resume: Trunk | None = None

    def stable_end(self, steps: int) -> int:
        """The optimizer step after which the trunk is kept (the last at the stable rate)."""
        return max(1, steps - self.decay_steps)


def decay_steps_for(steps: int, fraction: float) -> int:
    """The decay's length for a run of `steps`: at least one step, and at least one step
    before it at the stable rate (so a trunk is kept)."""
    if steps < 2:
        return 0
    return min(steps - 1, max(1, round(steps * fraction)))


class TrunkCallback(TrainerCallback):
    """Continues the schedule's trunk and keeps the next one.

    At the start of training (not of a resumed attempt, whose checkpoint has its own
    optimizer state) it loads the trunk's optimizer state; at the end of optimizer step
    `at_step` it writes the trunk: the adapter files, the optimizer's state and
    `trunk.json` with each file's sha256, in a staging folder moved into place at once (a
    run killed while writing leaves no trunk, never half of one)."""

    def __init__(self, schedule: WsdSchedule, at_step: int, learning_rate: float) -> None:
        self.schedule = schedule
        self.at_step = at_step
        self.learning_rate = learning_rate
        self.written: Trunk | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.schedule.resume is not None and state.global_step == 0:
            load_optimizer_state(optimizer, self.schedule.resume, lr_scheduler.get_last_lr())

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    optimizer: Any = None, **kwargs: Any) -> None:
        if state.global_step != self.at_step or self.written is not None:
            return
        schedule = self.schedule
        earlier = schedule.resume.steps if schedule.resume else 0
        self.written = write_trunk(model, optimizer, schedule.save_to, Trunk(
            folder=schedule.save_to, steps=earlier + state.global_step,
            cycle_id=schedule.cycle_id, base_model_sha256=schedule.base_model_sha256,
            learning_rate=self.learning_rate))
        log.info("train.trunk_kept", path=str(schedule.save_to), steps=self.written.steps,
                 at_step=state.global_step)


def write_trunk(model: Any, optimizer: Any, target: Path, trunk: Trunk) -> Trunk:
    """Save `model`'s adapter and `optimizer`'s state as a trunk at `target`, atomically."""
    staging = target.with_name(f".{target.name}-staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(str(staging))
    torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
    files = {name: sha256_file(staging / name) for name in TRUNK_FILES}
    record = trunk.model_dump(mode="json", exclude={"folder"}) | {"files": files}
    (staging / TRUNK_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return trunk


def read_trunk(folder: Path) -> Trunk | None:
    """The trunk kept in `folder`, or None when there is none or a file does not match the
    sha256 recorded when it was written (logged: the night then continues the champion)."""
    record_path = folder / TRUNK_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    files = record.pop("files", {})
    bad = [name for name in TRUNK_FILES
           if not (folder / name).is_file() or sha256_file(folder / name) != files.get(name)]
    if bad:
        log.warning("trunk.unusable", path=str(folder), files=bad,
                    reason="a file is missing or differs from its recorded sha256")
        return None
    return Trunk(folder=folder, **record)


def latest_trunk(cycles_dir: Path, current_cycle: str, base_sha: str) -> Trunk | None:
    """The newest trunk kept by a cycle before `current_cycle` on the base whose checksum
    is `base_sha` (a trunk of another base cannot be continued); None when there is none or
    that one is damaged: the night then continues the champion rather than an older trunk,
    which would throw away the nights since."""
    if not cycles_dir.is_dir():
        return None
    for folder in sorted(cycles_dir.iterdir(), reverse=True):
        record = folder / TRUNK_DIR / TRUNK_FILE
        if folder.name >= current_cycle or not record.is_file():
            continue
        if json.loads(record.read_text()).get("base_model_sha256") == base_sha:
            return read_trunk(folder / TRUNK_DIR)
    return None


def load_optimizer_state(optimizer: Any, trunk: Trunk, learning_rates: list[float]) -> None:
    """Continue the trunk's optimizer: Adam's moments and step counts as they were, at this
    run's learning rates (the saved ones are the snapshot step's, and the configured rate
    may have changed since)."""
    state = torch.load(trunk.folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)
    for group, rate in zip(optimizer.param_groups, learning_rates, strict=True):
        group["lr"] = rate
