"""The progress reporter: time-left arithmetic, the plain lines, and `current()`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from evolora.progress import (
    PRIOR_SECONDS_PER_UNIT,
    LiveProgress,
    NullProgress,
    PlainProgress,
    Progress,
    Stage,
    clock_text,
    current,
    progress_file,
    reporting,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


STAGES = [
    Stage("data", "generate data", 1, "step"),
    Stage("train/g0-m0", "train g0-m0 (generalist)", 10, "train_step"),
    Stage("eval/g0-m0/eval", "evaluate g0-m0 on eval", 30, "eval_problem"),
    Stage("train/g0-m1", "train g0-m1 (specialist: dates, percent)", 4, "train_step"),
]


def planned(clock: Clock) -> Progress:
    progress = Progress(clock=clock)
    progress.plan(STAGES)
    return progress


def test_before_anything_runs_the_estimate_is_the_priors_times_the_planned_units() -> None:
    progress = planned(Clock())
    expected = (1 * PRIOR_SECONDS_PER_UNIT["step"] + 14 * PRIOR_SECONDS_PER_UNIT["train_step"]
                + 30 * PRIOR_SECONDS_PER_UNIT["eval_problem"])
    assert progress.remaining_s() == pytest.approx(expected)
    assert progress.position() == (0, 4)


def test_measured_seconds_per_unit_replace_the_prior_of_their_kind_only() -> None:
    clock = Clock()
    progress = planned(clock)
    progress.start("data")
    clock.tick(20)
    progress.finish("data")
    progress.start("train/g0-m0")
    for _ in range(4):
        clock.tick(3)  # 3 s a step, against a 9 s prior
        progress.advance()

    assert progress.seconds_per_unit("step") == pytest.approx(20)
    assert progress.seconds_per_unit("train_step") == pytest.approx(3)
    assert progress.seconds_per_unit("eval_problem") == PRIOR_SECONDS_PER_UNIT["eval_problem"]
    # 6 + 4 steps to go at 3 s, 30 problems at the prior.
    assert progress.remaining_s() == pytest.approx(10 * 3 + 30 * 2.0)
    assert progress.elapsed_s() == pytest.approx(32)


def test_the_unit_in_hand_counts_down_from_the_last_one_done() -> None:
    clock = Clock()
    progress = planned(clock)
    progress.start("train/g0-m0")
    clock.tick(4)
    progress.advance()  # 4 s a step
    clock.tick(3)  # 3 s into the second step

    # 9 steps left at 4 s, less the 3 s already spent on the one in hand; then 4 steps at 4 s,
    # and the data step and 30 problems at their priors.
    assert progress.remaining_s() == pytest.approx((9 * 4 - 3) + 4 * 4 + 5.0 + 30 * 2.0)


def test_an_indivisible_step_counts_its_whole_time_as_one_unit() -> None:
    clock = Clock()
    progress = planned(clock)
    progress.start("data")
    clock.tick(7)
    progress.finish()  # the running stage

    assert progress.seconds_per_unit("step") == pytest.approx(7)
    assert progress.position() == (1, 4)


def test_a_stage_a_resumed_run_already_had_is_done_but_not_measured() -> None:
    clock = Clock()
    progress = planned(clock)
    progress.finish("train/g0-m0")  # skipped: never started
    clock.tick(100)

    assert progress.seconds_per_unit("train_step") == PRIOR_SECONDS_PER_UNIT["train_step"]
    assert progress.remaining_s() == pytest.approx(5.0 + 4 * 9.0 + 30 * 2.0)


def test_starting_a_stage_finishes_the_one_still_running() -> None:
    clock = Clock()
    progress = planned(clock)
    progress.start("train/g0-m0")
    for _ in range(10):
        clock.tick(2)
        progress.advance()
    progress.start("eval/g0-m0/eval")

    # Stages count in the order they run: the training is done, the evaluation 2nd of 4.
    assert progress.position() == (2, 4)
    assert progress.seconds_per_unit("train_step") == pytest.approx(2)


def test_an_unplanned_stage_is_added_rather_than_refused() -> None:
    progress = planned(Clock())
    progress.start("gate")
    assert progress.position() == (1, 5)
    assert "gate" in progress.status_line()


def test_a_stage_that_turned_out_unneeded_leaves_the_plan_and_the_estimate() -> None:
    progress = planned(Clock())
    before = progress.remaining_s()
    progress.drop("eval/g0-m0/eval")
    assert progress.position() == (0, 3)
    assert progress.remaining_s() == pytest.approx(before - 30 * 2.0)
    progress.start("data")
    progress.drop("data")  # a stage under way stays
    assert progress.position() == (1, 3)


def test_the_status_line_names_the_stage_its_units_and_the_times() -> None:
    clock = Clock()
    progress = planned(clock)
    progress.finish("data")
    progress.start("train/g0-m0")
    # 5 s a step: 7 + 4 steps to go, 30 problems at the prior.
    for _ in range(3):
        clock.tick(5)
        progress.advance()

    assert progress.status_line() == (
        "[2/4] train g0-m0 (generalist) | 3/10 steps | elapsed 0:15 | ~1:55 left")


def test_plain_progress_prints_one_line_per_finished_stage() -> None:
    clock, out = Clock(), io.StringIO()
    progress = PlainProgress(out, clock=clock)
    progress.plan(STAGES)
    progress.finish("data")
    progress.start("train/g0-m0")
    clock.tick(30)
    progress.advance(10)
    progress.start("eval/g0-m0/eval")  # nothing printed when a stage starts
    clock.tick(15)
    progress.advance(30)
    progress.finish()
    progress.close()

    assert out.getvalue().splitlines() == [
        "[1/4] generate data: already done (resumed) | elapsed 0:00 | ~3:06 left",
        "[2/4] train g0-m0 (generalist): done in 0:30 | elapsed 0:30 | ~1:12 left",
        "[3/4] evaluate g0-m0 on eval: done in 0:15 | elapsed 0:45 | ~0:12 left",
        "3 of 4 stages done in 0:45",
    ]


def test_plain_progress_as_json_lines() -> None:
    clock, out = Clock(), io.StringIO()
    progress = PlainProgress(out, json_lines=True, clock=clock)
    progress.plan(STAGES[:2])
    progress.start("data")
    clock.tick(12)
    progress.finish("data")
    progress.close()

    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line == {"event": "progress.stage_done", "stage": "data", "label": "generate data",
                    "n": 1, "of": 2, "skipped": False, "seconds": 12.0, "elapsed_s": 12.0,
                    "remaining_s": 90.0}


def test_current_is_a_silent_reporter_outside_reporting() -> None:
    assert isinstance(current(), NullProgress)
    current().plan(STAGES)
    current().start("data")
    current().advance(3)
    current().finish()
    current().close()  # none of it raises or prints


def test_reporting_makes_the_reporter_current_and_closes_it() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, clock=Clock())
    progress.plan(STAGES[:1])
    with reporting(progress) as active:
        assert current() is active is progress
        current().start("data")
        current().finish()
    assert isinstance(current(), NullProgress)
    assert out.getvalue().splitlines()[-1] == "1 of 1 stages done in 0:00"
    progress.close()  # a second close prints nothing more
    assert len(out.getvalue().splitlines()) == 2


def test_advance_without_a_running_stage_is_ignored() -> None:
    progress = planned(Clock())
    progress.advance(5)
    assert progress.remaining_s() == pytest.approx(5.0 + 14 * 9.0 + 30 * 2.0)


@pytest.mark.parametrize(("seconds", "text"),
                         [(0, "0:00"), (59.6, "1:00"), (754, "12:34"), (3725, "1:02:05")])
def test_clock_text(seconds: float, text: str) -> None:
    assert clock_text(seconds) == text


def test_live_progress_draws_the_status_line_and_ends_with_the_summary() -> None:
    from rich.console import Console

    screen = io.StringIO()
    clock = Clock()
    progress = LiveProgress(Console(file=screen, force_terminal=True, width=200), clock=clock)
    progress.plan(STAGES[:2])
    progress.start("train/g0-m0")  # the live line appears with the first stage
    assert "[1/2] train g0-m0 (generalist) | 0/10 steps" in screen.getvalue()
    clock.tick(20)
    progress.finish()
    progress.close()

    assert screen.getvalue().rstrip().endswith("1 of 2 stages done in 0:20")


def test_a_mirrored_reporter_keeps_a_progress_file_another_process_can_read(
        tmp_path: Path) -> None:
    clock = Clock()
    progress = planned(clock)
    path = tmp_path / "progress.json"
    progress.mirror_to(path)
    assert json.loads(path.read_text())["stage"] is None
    progress.finish("data")  # done by an earlier run: its share counts as done
    progress.start("train/g0-m0")
    clock.tick(9)
    progress.advance(4)  # throttled: written, since a second has passed since the last write
    shown = json.loads(path.read_text())
    assert shown["state"] == "running" and shown["pid"] > 0
    assert shown["stage"] == {"key": "train/g0-m0", "label": "train g0-m0 (generalist)",
                              "done": 4, "units": 10, "unit": "steps"}
    assert (shown["n"], shown["of"]) == (2, 4)
    # The share done weighs every unit by its kind's rate: 9 s / 4 steps measured so far.
    rate, step = 9 / 4, PRIOR_SECONDS_PER_UNIT["step"]
    total = step + 14 * rate + 30 * PRIOR_SECONDS_PER_UNIT["eval_problem"]
    assert shown["percent"] == pytest.approx(round(100 * (step + 4 * rate) / total, 1))
    assert shown["remaining_s"] == pytest.approx(progress.remaining_s(), abs=0.1)
    progress.advance(1)  # within a second of the last write: not written again
    assert json.loads(path.read_text())["stage"]["done"] == 4
    progress.finish()
    assert json.loads(path.read_text())["stage"] is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_progress_file_ends_done_or_failed_and_works_without_a_reporter(tmp_path: Path) -> None:
    done, failed = tmp_path / "done.json", tmp_path / "failed.json"
    assert isinstance(current(), NullProgress)
    # A Prefect worker's run has no reporter: a silent one is made for the block.
    with progress_file(done) as progress:
        assert current() is progress and not isinstance(progress, NullProgress)
        progress.plan(STAGES[:1])
        progress.start("data")
        progress.finish("data")
    assert isinstance(current(), NullProgress)
    shown = json.loads(done.read_text())
    assert shown["state"] == "done" and shown["percent"] == 100.0
    with (reporting(PlainProgress(io.StringIO())) as outer, pytest.raises(RuntimeError),
          progress_file(failed) as progress):
        assert progress is outer
        progress.plan(STAGES)
        progress.start("data")
        raise RuntimeError("killed")
    shown = json.loads(failed.read_text())
    assert shown["state"] == "failed" and shown["stage"]["key"] == "data"
