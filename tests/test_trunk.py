"""The nights as one training run: a night keeps its trunk before the decay, and the next
continues it at the stable rate with the optimizer's state (tasks/train/trunk.py).

Real trainings of the tiny model, a few steps each; the learning rate each step ran at is
read back from MLflow, Adam's step counts from the optimizer state the trunk kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from evolora.settings import Settings
from evolora.tracking import setup_mlflow
from tasks.train.callbacks import warmup_factor
from tasks.train.trainer import read_adapter_manifest, train_adapter
from tasks.train.trunk import (
    OPTIMIZER_FILE,
    TRUNK_DIR,
    TRUNK_FILE,
    WsdSchedule,
    decay_steps_for,
    latest_trunk,
    read_trunk,
)
from tests.support.adapters import adapter_distance
from tests.support.training import with_train


def learning_rates(run_id: str) -> list[float]:
    history = MlflowClient().get_metric_history(run_id, "learning_rate")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def adam_steps(trunk_folder: Path) -> set[int]:
    state = torch.load(trunk_folder / OPTIMIZER_FILE, weights_only=True)["state"]
    return {int(param["step"]) for param in state.values()}


def test_two_nights_of_the_trunk_are_one_schedule(tiny_settings: Settings, tiny_train_rows: Any,
                                                  tmp_path: Path) -> None:
    settings = with_train(tiny_settings, max_steps=6, batch_size=2, logging_steps=1,
                          continue_lr_scale=0.25)
    setup_mlflow(settings)
    adapters = settings.paths.data_dir / "adapters"
    cycles = tmp_path / "cycles"
    lr = settings.train.learning_rate

    night1 = train_adapter(settings, settings.model.base, tiny_train_rows, adapters, "night1",
                           wsd=WsdSchedule(decay_steps=2, save_to=cycles / "c1" / TRUNK_DIR,
                                           cycle_id="c1", base_model_sha256="base-a"))
    trunk1 = read_trunk(cycles / "c1" / TRUNK_DIR)
    assert trunk1 is not None and trunk1.steps == 4 and trunk1.member_id == "trunk-c1"
    assert adam_steps(trunk1.folder) == {4}  # kept after step 4, before the decay
    # Warm-up (one step), stable at the peak, then two decay steps that never reach 0.
    ran = learning_rates(night1.run_id)
    assert ran == pytest.approx([lr * warmup_factor(s, warmup=1, total=6, kind="wsd", decay=2)
                                 for s in range(6)])
    assert ran[1:4] == pytest.approx([lr] * 3) and 0 < ran[5] < ran[4] < lr
    # The candidate is the decayed adapter: the decay moved it away from the trunk.
    assert adapter_distance(night1.adapter_dir, trunk1.folder) > 0

    night2 = train_adapter(settings, settings.model.base, tiny_train_rows, adapters, "night2",
                           init_adapter=trunk1.folder,
                           wsd=WsdSchedule(decay_steps=2, save_to=cycles / "c2" / TRUNK_DIR,
                                           cycle_id="c2", base_model_sha256="base-a",
                                           resume=trunk1))
    # The same run goes on: no warm-up, the full rate (not continue_lr_scale), and Adam's
    # step count continues from the trunk's 4.
    assert learning_rates(night2.run_id)[:4] == pytest.approx([lr] * 4)
    trunk2 = read_trunk(cycles / "c2" / TRUNK_DIR)
    assert trunk2 is not None and trunk2.steps == 8 and adam_steps(trunk2.folder) == {8}
    params = MlflowClient().get_run(night2.run_id).data.params
    assert float(params["run.peak_learning_rate"]) == pytest.approx(lr)
    manifest = read_adapter_manifest(night2.adapter_dir)
    assert manifest["schedule"] == {
        "kind": "wsd", "decay_steps": 2, "trunk_kept_after_step": 4,
        "trunk_to": str(cycles / "c2" / TRUNK_DIR), "continues_trunk": "trunk-c1",
        "trunk_steps_before": 4}

    # The next night finds the newest trunk of an earlier cycle on its base, and none of
    # another base's.
    assert latest_trunk(cycles, "c3", "base-a") == trunk2
    assert latest_trunk(cycles, "c2", "base-a") == trunk1  # never the cycle's own
    assert latest_trunk(cycles, "c3", "base-b") is None


def test_a_damaged_trunk_is_not_continued(tiny_settings: Settings, tiny_train_rows: Any,
                                          tmp_path: Path) -> None:
    settings = with_train(tiny_settings, max_steps=3, batch_size=2)
    setup_mlflow(settings)
    folder = tmp_path / "cycles" / "c1" / TRUNK_DIR
    train_adapter(settings, settings.model.base, tiny_train_rows,
                  settings.paths.data_dir / "adapters", "night1",
                  wsd=WsdSchedule(decay_steps=1, save_to=folder, cycle_id="c1",
                                  base_model_sha256="base-a"))
    assert read_trunk(folder) is not None
    assert not list(folder.parent.glob(".*staging"))  # written through a staging folder
    record = json.loads((folder / TRUNK_FILE).read_text())
    assert set(record["files"]) == {"adapter_config.json", "adapter_model.safetensors",
                                    OPTIMIZER_FILE}
    older = tmp_path / "cycles" / "c0" / TRUNK_DIR
    shutil.copytree(folder, older)
    (folder / OPTIMIZER_FILE).write_bytes(b"torn")
    assert read_trunk(folder) is None
    # The newest trunk is damaged: the night continues the champion, not an older trunk.
    assert read_trunk(older) is not None
    assert latest_trunk(tmp_path / "cycles", "c2", "base-a") is None


@pytest.mark.parametrize(("steps", "fraction", "expected"),
                         [(52, 0.25, 13), (6, 0.25, 2), (2, 0.25, 1), (1, 0.25, 0), (4, 0.9, 3)])
def test_the_decay_leaves_a_stable_step_for_the_trunk(steps: int, fraction: float,
                                                      expected: int) -> None:
    assert decay_steps_for(steps, fraction) == expected


def test_nights_json_records_the_trunk_behind_each_night(tmp_path: Path) -> None:
    from flows.nights import NightsRecord
    from tasks.records import CycleSummary

    def night(cycle_id: str, trunk_steps: int) -> CycleSummary:
        return CycleSummary(
            cycle_id=cycle_id, base=0.0, base_hard=0.0, best_initial=0.3,
            best_initial_hard=0.2, best_initial_id="g0-m0", generations=[], challenger=0.36,
            challenger_hard=0.5, challenger_id="g0-m0", challenger_reason="the fittest",
            champion=0.36, champion_hard=0.5, champion_version="1", promoted=True,
            registry_version="1", gate_reasons=[], resumed=False, wall_s=1100.0,
            wall_s_this_run=1100.0, evolution_gain=0.0, evolution_gain_hard=0.0,
            started_from=None if trunk_steps == 39 else "trunk-a", trunk_steps=trunk_steps,
            train_steps=56, test_problems=240)

    path = tmp_path / "mlruns" / "nights.json"
    record = NightsRecord(path)
    record.add(night("a", 39), wall_s=1148.0)
    record.add(night("b", 78), wall_s=1190.0)
    written = json.loads(path.read_text())["cycles"]
    assert [(n["cycle_id"], n["trunk_steps"], n["train_steps"]) for n in written] == [
        ("a", 39, 56), ("b", 78, 56)]
