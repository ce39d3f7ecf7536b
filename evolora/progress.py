"""One progress display for a long command: the running stage, its units, the time left.

A command plans every stage it will run up front, then marks each stage as it starts and
finishes; the code where the units of work happen (a training step, an evaluated problem)
calls `current().advance()` without knowing who is watching:

    with reporting(terminal_progress()) as progress:
        progress.plan([Stage("data", "generate data", 1, "step"),
                       Stage("train/g0-m0", "train g0-m0 (generalist)", 72, "train_step")])
        progress.start("data"); ...; progress.finish("data")

The time left is the planned units still to do times the measured seconds per unit of
their kind, so it sharpens as the run goes. Outside `reporting`, `current()` is a reporter
that does nothing, so library code and tests need no set-up.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from evolora.logs import get_logger

log = get_logger(__name__)

# Seconds per unit until one of the kind is measured in this run. From the 2-core CPU demo
# (configs/demo.yaml, SmolLM2-135M): a training step at batch 8 takes ~8-10 s, one evaluated
# problem ~1-3 s (batched ReAct runs); an indivisible step (a merge, the gate) a few s. The
# cycle's data step (generation, teacher paraphrases, checks) took 1.5-4.5 min there, and a
# breeding plan from the embedded agents up to a minute.
PRIOR_SECONDS_PER_UNIT = {"train_step": 9.0, "eval_problem": 2.0, "step": 5.0,
                          "data": 150.0, "plan": 45.0, "breed": 15.0}
UNIT_WORDS = {"train_step": "steps", "eval_problem": "problems"}
# The progress file is rewritten at every stage change, and at most this often in a stage.
SNAPSHOT_EVERY_S = 1.0
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class Stage:
    """One planned piece of a command: what a person reads, and how many units it has."""

    key: str  # e.g. "train/g0-m1"
    label: str  # e.g. "train g0-m1 (specialist: dates, percent)"
    units: int = 1  # training steps, problems to evaluate; 1 for an indivisible step
    kind: str = "step"  # "train_step", "eval_problem" or "step": the ETA's rate per kind


@dataclass
class _StageState:
    stage: Stage
    done: int = 0
    started_at: float | None = None
    last_unit_at: float | None = None
    finished: bool = False
    skipped: bool = False


def clock_text(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour up."""
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Tracks the planned stages and the seconds per unit of each kind; shows nothing.

    `PlainProgress` and `LiveProgress` show it; `clock` is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._stages: dict[str, _StageState] = {}
        self._running: str | None = None
        self._finish_order: list[str] = []
        # kind -> [seconds, units] of the finished (not skipped) stages of that kind
        self._measured: dict[str, list[float]] = {}
        self._closed = False
        # advance() runs in the worker's thread, the live display reads from its own.
        self._lock = threading.RLock()
        self._mirror: Path | None = None
        self._mirrored_at = float("-inf")

    # ----- the API a command and the workers call -----
    def plan(self, stages: list[Stage]) -> None:
        """Every stage the command will run, in order (planning again adds or updates)."""
        with self._lock:
            for stage in stages:
                if stage.key in self._stages:
                    self._stages[stage.key].stage = stage
                else:
                    self._stages[stage.key] = _StageState(stage)

    def start(self, key: str) -> None:
        """The stage `key` begins; a stage still running is finished first."""
        with self._lock:
            if self._running is not None and self._running != key:
                self.finish(self._running)
            state = self._state(key)
            now = self._clock()
            state.started_at = state.last_unit_at = now
            state.done, state.finished, state.skipped = 0, False, False
            self._running = key
        self._stage_started(state)
        self._write_snapshot()

    def advance(self, done: int = 1) -> None:
        """`done` more units of the running stage are done (ignored when none is running)."""
        with self._lock:
            if self._running is None:
                return
            state = self._stages[self._running]
            state.done += done
            state.last_unit_at = self._clock()
            due = state.last_unit_at - self._mirrored_at >= SNAPSHOT_EVERY_S
        if due:
            self._write_snapshot()

    def finish(self, key: str | None = None) -> None:
        """The stage is done: the running one by default, or a planned one a resumed run
        already had (it is counted as done and measured as nothing)."""
        with self._lock:
            key = key or self._running
            if key is None:
                return
            state = self._state(key)
            if state.finished:
                return
            seconds = 0.0
            if state.started_at is None:
                state.skipped = True
            else:
                seconds = self._clock() - state.started_at
                units = state.done or state.stage.units
                measured = self._measured.setdefault(state.stage.kind, [0.0, 0.0])
                measured[0] += seconds
                measured[1] += units
            state.done = max(state.done, state.stage.units)
            state.finished = True
            self._finish_order.append(key)
            if self._running == key:
                self._running = None
        log.debug("progress.stage_done", stage=key, seconds=round(seconds, 1),
                  skipped=state.skipped, remaining_s=round(self.remaining_s()))
        self._stage_finished(state, seconds)
        self._write_snapshot()

    def close(self) -> None:
        """The command is over: stop showing (a second call does nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closed_now()

    def mirror_to(self, path: Path | None) -> None:
        """Keep `path` (JSON, `snapshot()`) up to date from now on: at every stage change and
        at most every SNAPSHOT_EVERY_S within a stage, so another process (the web console)
        can show the run; None stops it."""
        self._mirror = path
        self._write_snapshot()

    def end_mirror(self, state: str) -> None:
        """Write the mirror's last snapshot with `state` ("done" or "failed"), then stop."""
        self._write_snapshot(state)
        self._mirror = None

    def snapshot(self, state: str = "running") -> dict[str, Any]:
        """What a display shows, as JSON-able data: the running stage and its units, stage n
        of N, the share of the estimated work done, elapsed and remaining seconds."""
        with self._lock:
            n, total = self.position()
            running = self._stages.get(self._running) if self._running else None
            done_s = sum(min(s.done, s.stage.units) * self.seconds_per_unit(s.stage.kind)
                         for s in self._stages.values())
            all_s = sum(s.stage.units * self.seconds_per_unit(s.stage.kind)
                        for s in self._stages.values())
            stage = None if running is None else {
                "key": running.stage.key, "label": running.stage.label,
                "done": min(running.done, running.stage.units), "units": running.stage.units,
                "unit": UNIT_WORDS.get(running.stage.kind, "")}
            return {"state": state, "pid": os.getpid(), "updated_at": time.time(),
                    "stage": stage, "n": n, "of": total,
                    "percent": round(100.0 * done_s / all_s, 1) if all_s else 0.0,
                    "elapsed_s": round(self.elapsed_s(), 1),
                    "remaining_s": round(self.remaining_s(), 1),
                    "status_line": self.status_line()}

    def _write_snapshot(self, state: str = "running") -> None:
        path = self._mirror
        if path is None:
            return
        with self._lock:
            self._mirrored_at = self._clock()
            text = json.dumps(self.snapshot(state))
        try:  # temp file + rename: a reader never sees half a file
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:  # the display is a courtesy: the run goes on without it
            log.warning("progress.mirror_failed", path=str(path), error=str(exc))

    # ----- what a display reads -----
    def elapsed_s(self) -> float:
        """Seconds since this reporter was made (the command's start)."""
        return self._clock() - self._started

    def seconds_per_unit(self, kind: str) -> float:
        """Measured seconds per unit of `kind` in this run, or its prior until measured."""
        with self._lock:
            seconds, units = self._measured.get(kind, [0.0, 0.0])
            running = self._stages.get(self._running) if self._running else None
            if running and running.stage.kind == kind and running.done:
                seconds += running.last_unit_at - running.started_at
                units += running.done
            if units:
                return seconds / units
            return PRIOR_SECONDS_PER_UNIT.get(kind, PRIOR_SECONDS_PER_UNIT["step"])

    def remaining_s(self) -> float:
        """Estimated seconds left: every unit not yet done, at its kind's rate."""
        with self._lock:
            now, total = self._clock(), 0.0
            for state in self._stages.values():
                if state.finished:
                    continue
                rate = self.seconds_per_unit(state.stage.kind)
                left = max(state.stage.units - state.done, 0) * rate
                if state.stage.key == self._running:
                    # The unit in hand has been under way since the last one finished.
                    left = max(left - (now - state.last_unit_at), 0.0)
                total += left
            return total

    def position(self) -> tuple[int, int]:
        """(n, N): the running stage is the n-th to run (else n stages are done), of N.

        Counted in the order stages run, not the order they were planned: a stage added
        late (an evaluation found to be needed) keeps the count going up.
        """
        with self._lock:
            done = len(self._finish_order)
            return done + (self._running is not None), len(self._stages)

    def drop(self, key: str) -> None:
        """Take a planned stage that turned out not to be needed out of the plan."""
        with self._lock:
            state = self._stages.get(key)
            if state is not None and state.started_at is None and not state.finished:
                del self._stages[key]

    def status_line(self) -> str:
        """The running stage, its units, stage n of N, elapsed and remaining time."""
        with self._lock:
            n, total = self.position()
            parts: list[str] = []
            state = self._stages.get(self._running) if self._running else None
            if state is None:
                parts.append("starting" if n == 0 else "between stages")
            else:
                parts.append(state.stage.label)
                if state.stage.units > 1 or state.stage.kind in UNIT_WORDS:
                    word = UNIT_WORDS.get(state.stage.kind, "")
                    parts.append(f"{min(state.done, state.stage.units)}/{state.stage.units}"
                                 f"{' ' + word if word else ''}")
            parts += [f"elapsed {clock_text(self.elapsed_s())}",
                      f"~{clock_text(self.remaining_s())} left"]
            return f"[{n}/{total}] " + " | ".join(parts)

    def finished_line(self, key: str, seconds: float) -> str:
        """The plain line for a finished stage: what, how long, elapsed, remaining."""
        with self._lock:
            state = self._stages[key]
            n, total = self._finish_order.index(key) + 1, len(self._stages)
            what = ("already done (resumed)" if state.skipped
                    else f"done in {clock_text(seconds)}")
            return (f"[{n}/{total}] {state.stage.label}: {what} | "
                    f"elapsed {clock_text(self.elapsed_s())} | "
                    f"~{clock_text(self.remaining_s())} left")

    # ----- hooks for the displays -----
    def _stage_started(self, state: _StageState) -> None:
        pass

    def _stage_finished(self, state: _StageState, seconds: float) -> None:
        pass

    def _closed_now(self) -> None:
        pass

    def _state(self, key: str) -> _StageState:
        if key not in self._stages:
            # An unplanned stage still shows; it just was not in the estimate before.
            self._stages[key] = _StageState(Stage(key, key))
        return self._stages[key]

    def _summary_line(self) -> str:
        done = sum(1 for s in self._stages.values() if s.finished)
        return f"{done} of {len(self._stages)} stages done in {clock_text(self.elapsed_s())}"


class NullProgress(Progress):
    """A reporter that does nothing: what `current()` is outside `reporting`."""

    def plan(self, stages: list[Stage]) -> None:
        pass

    def start(self, key: str) -> None:
        pass

    def advance(self, done: int = 1) -> None:
        pass

    def finish(self, key: str | None = None) -> None:
        pass

    def mirror_to(self, path: Path | None) -> None:
        pass

    def end_mirror(self, state: str) -> None:
        pass


class PlainProgress(Progress):
    """One line per finished stage, for logs and pipes (CI, `make demo | tee`).

    With `json_lines`, each line is a JSON object, to sit among `--log-json` events.
    """

    def __init__(self, stream: TextIO | None = None, *, json_lines: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._stream = stream
        self._json_lines = json_lines

    def _write(self, text: str) -> None:
        # sys.stderr is looked up per line: a test runner may have replaced it since.
        stream = self._stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def _stage_finished(self, state: _StageState, seconds: float) -> None:
        if not self._json_lines:
            self._write(self.finished_line(state.stage.key, seconds))
            return
        n, total = self._finish_order.index(state.stage.key) + 1, len(self._stages)
        record: dict[str, Any] = {
            "event": "progress.stage_done", "stage": state.stage.key,
            "label": state.stage.label, "n": n, "of": total, "skipped": state.skipped,
            "seconds": round(seconds, 1), "elapsed_s": round(self.elapsed_s(), 1),
            "remaining_s": round(self.remaining_s(), 1)}
        self._write(json.dumps(record))

    def _closed_now(self) -> None:
        if self._stages and not self._json_lines:
            self._write(self._summary_line())


class LiveProgress(Progress):
    """One live line on a terminal's stderr, redrawn twice a second; log lines and prints
    scroll above it."""

    def __init__(self, console: Any = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console

        super().__init__(clock)
        self._console = console or Console(stderr=True)
        self._live: Any = None

    def _render(self) -> Any:
        from rich.text import Text

        return Text(self.status_line(), style="bold cyan", overflow="ellipsis", no_wrap=True)

    def _stage_started(self, state: _StageState) -> None:
        if self._live is None and not self._closed:
            from rich.live import Live

            self._live = Live(console=self._console, get_renderable=self._render,
                              refresh_per_second=2, transient=True)
            self._live.start(refresh=True)

    def _closed_now(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._stages:
            self._console.print(self._summary_line(), highlight=False, markup=False)


def terminal_progress(json_lines: bool = False) -> Progress:
    """A live line when stdout and stderr are a terminal, else one plain line per stage."""
    if not json_lines and sys.stdout.isatty() and sys.stderr.isatty():
        return LiveProgress()
    return PlainProgress(json_lines=json_lines)


_NULL = NullProgress()
_active: list[Progress] = []


def current() -> Progress:
    """The reporter of the running command, or one that does nothing."""
    return _active[-1] if _active else _NULL


@contextmanager
def stage(key: str, label: str | None = None, units: int = 1, kind: str = "step"
          ) -> Iterator[None]:
    """Report one stage to the current reporter while the block runs (a stage not planned
    yet is added, with `label`, `units` and `kind`)."""
    progress = current()
    if label is not None:
        progress.plan([Stage(key, label, units, kind)])
    progress.start(key)
    yield
    progress.finish(key)


@contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    """Make `progress` the `current()` reporter for the block; closed when the block ends."""
    _active.append(progress)
    try:
        yield progress
    finally:
        _active.remove(progress)
        progress.close()


@contextmanager
def progress_file(path: Path) -> Iterator[Progress]:
    """Mirror the running command's progress to `path` for the block (a silent reporter is
    made when none is set, as in a Prefect worker's run); the file ends "done" or "failed"."""
    owned = isinstance(current(), NullProgress)
    progress = Progress() if owned else current()
    if owned:
        _active.append(progress)
    progress.mirror_to(path)
    try:
        yield progress
    except BaseException:
        progress.end_mirror("failed")
        raise
    else:
        progress.end_mirror("done")
    finally:
        if owned:
            _active.remove(progress)
