"""Train, eval and the frozen test split.

`build_splits` writes train/eval from `data.seed` and the frozen TEST split from
`data.test_seed` with the test wording pool. The test split is generated once, stored with a
content hash, and reused from then on; a test split whose hash no longer checks out raises
`TestSetCorruptedError` instead of being silently regenerated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from agent.tools import Tool, default_tools
from evolora.settings import DataSettings
from tasks.data.dedup import deduplicate, normalize_question
from tasks.data.generate import Paraphraser, generate_examples
from tasks.records import Split
from tasks.data.report import GenerationReport, SplitsReport
from tasks.data.skills import SKILLS
from tasks.data.split_io import dataset_hash, load_split, save_split

# Bump when the example format changes: a new version means a new frozen test set.
FORMAT_VERSION = 1


class TestSetCorruptedError(RuntimeError):
    """The frozen test split on disk does not match its manifest."""

    __test__ = False  # not a pytest test class


@dataclass
class SplitBundle:
    """The three splits, where they live on disk, their content hashes and reports."""

    train: datasets.Dataset
    eval: datasets.Dataset
    test: datasets.Dataset
    paths: dict[str, Path]
    hashes: dict[str, str]
    reports: dict[str, GenerationReport]
    test_reused: bool

    @property
    def train_path(self) -> Path:
        return self.paths["train"]

    @property
    def eval_path(self) -> Path:
        return self.paths["eval"]

    @property
    def test_path(self) -> Path:
        return self.paths["test"]

    @property
    def report(self) -> SplitsReport:
        """All three generation reports as one loggable object."""
        return SplitsReport(self.reports, self.test_reused)


def _test_spec(data: DataSettings, per_skill: int, seed: int) -> dict[str, Any]:
    # Everything that decides a test set's content: a different spec is a different test set.
    return {
        "format_version": FORMAT_VERSION,
        "skills": list(data.skills),
        "test_per_skill": per_skill,
        "test_seed": seed,
        "hard_fraction": data.hard_fraction,
    }


def _frozen_test_split(
    data: DataSettings, root: Path, per_skill: int, seed: int, tools: dict[str, Tool]
) -> tuple[Path, str, GenerationReport, bool]:
    """A frozen test split of this spec: the saved one (checked), or generated once and saved.
    Returns its folder, content hash, generation report and whether it was reused."""
    spec = _test_spec(data, per_skill, seed)
    path, content_hash = _find_test_split(root, spec)
    report = GenerationReport(split="test")
    if path is not None and content_hash is not None:
        return path, content_hash, report, True
    rows = _generate_split(data, "test", per_skill, seed, None, tools, report)
    path, content_hash = save_split(root, "test", rows, {"spec": spec,
                                                         "report": report.to_dict()})
    return path, content_hash, report, False


def build_splits(
    data: DataSettings, data_dir: Path, paraphrase: Paraphraser | None = None,
    train_seed: int | None = None,
) -> SplitBundle:
    """Train, eval and the frozen test split (and the continuity test split, when
    configured), saved under `data_dir/datasets/`.

    A test split is reused when a saved one with the same spec exists (its content hash
    must check out, else `TestSetCorruptedError`); it never sees the teacher, so it does not
    depend on which teacher ran. Train and eval never contain a test question. `train_seed`
    (default `data.seed`) draws the training problems: each night of a cycle passes its own,
    so nights train on fresh problems while eval stays drawn from `data.seed`.
    """
    unknown = [skill for skill in data.skills if skill not in SKILLS]
    if unknown:
        raise ValueError(
            f"unknown skill(s) {unknown} in data.skills; known skills: {', '.join(SKILLS)}"
        )
    root = Path(data_dir) / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    tools = default_tools()

    test_path, test_hash, test_report, test_reused = _frozen_test_split(
        data, root, data.test_per_skill, data.test_seed, tools)
    test = load_split(test_path)
    held_out = list(test["question"])
    continuity_path = None
    if data.continuity_test_per_skill:
        continuity_path, continuity_hash, _report, _reused = _frozen_test_split(
            data, root, data.continuity_test_per_skill, data.continuity_test_seed, tools)
        held_out += list(load_split(continuity_path)["question"])

    train_report = GenerationReport(split="train")
    train_rows = _generate_split(
        data, "train", data.train_per_skill, data.seed if train_seed is None else train_seed,
        paraphrase, tools, train_report
    )
    train_rows = deduplicate(train_rows, train_report, against=held_out)
    eval_report = GenerationReport(split="eval")
    eval_rows = _generate_split(
        data, "eval", data.eval_per_skill, data.seed, None, tools, eval_report
    )
    eval_rows = deduplicate(
        eval_rows, eval_report, against=[*held_out, *(r["question"] for r in train_rows)]
    )
    # The guarantee the whole evaluation rests on, checked on what is about to be saved.
    overlap = {normalize_question(q) for q in held_out} & {
        normalize_question(r["question"]) for r in train_rows
    }
    assert not overlap, f"train and test share questions: {sorted(overlap)[:3]}"

    paths = {"test": test_path}
    hashes = {"test": str(test_hash)}
    if continuity_path is not None:
        paths["continuity"], hashes["continuity"] = continuity_path, continuity_hash
    for name, rows, report in (
        ("train", train_rows, train_report),
        ("eval", eval_rows, eval_report),
    ):
        _recount(report, rows)
        seed = data.seed if name == "eval" or train_seed is None else train_seed
        extra = {"seed": seed, "report": report.to_dict()}
        paths[name], hashes[name] = save_split(root, name, rows, extra)
    return SplitBundle(
        train=load_split(paths["train"]),
        eval=load_split(paths["eval"]),
        test=test,
        paths=paths,
        hashes=hashes,
        reports={"train": train_report, "eval": eval_report, "test": test_report},
        test_reused=test_reused,
    )


def _generate_split(
    data: DataSettings,
    split: Split,
    per_skill: int,
    seed: int,
    paraphrase: Paraphraser | None,
    tools: dict[str, Tool],
    report: GenerationReport,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if per_skill == 0:
        return rows
    for skill in data.skills:
        examples, skill_report = generate_examples(
            skill,
            per_skill,
            split=split,
            seed=seed,
            hard_fraction=_hard_fraction(data, split),
            paraphrase=paraphrase,
            paraphrase_fraction=data.paraphrase_fraction,
            reword_fraction=data.reword_fraction,
            tools=tools,
        )
        rows.extend(examples)
        report.merge(skill_report)
    # Per-skill generation cannot see other skills' questions: deduplicate across them too.
    return deduplicate(rows, report)


def _hard_fraction(data: DataSettings, split: Split) -> float:
    if split == "train" and data.train_hard_fraction is not None:
        return data.train_hard_fraction
    return data.hard_fraction


def _recount(report: GenerationReport, rows: list[dict[str, Any]]) -> None:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        levels = counts.setdefault(row["skill"], {})
        levels[row["level"]] = levels.get(row["level"], 0) + 1
    report.counts = counts
    report.questions = [row["question"] for row in rows]
    report.update_diversity()


def _find_test_split(root: Path, spec: dict[str, Any]) -> tuple[Path | None, str | None]:
    for candidate in sorted(root.glob("test-*")):
        manifest_path = candidate / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise TestSetCorruptedError(
                f"frozen test split {candidate} has an unreadable manifest.json ({exc}); "
                "restore it from a backup, or delete the folder to create a NEW test set "
                "(scores before and after are then not comparable)"
            ) from None
        if manifest.get("spec") != spec:
            continue
        expected = manifest.get("content_hash")
        try:
            rows = datasets.Dataset.load_from_disk(str(candidate)).to_list()
        except Exception as exc:
            raise TestSetCorruptedError(
                f"frozen test split {candidate} cannot be loaded ({type(exc).__name__}: {exc}); "
                "restore it, or delete the folder to create a NEW test set"
            ) from None
        actual = dataset_hash(rows)
        if actual != expected:
            raise TestSetCorruptedError(
                f"frozen test split {candidate} was modified: content hash {actual[:12]} != "
                f"manifest {str(expected)[:12]}; restore it, or delete the folder to create a "
                "NEW test set (it is never regenerated silently)"
            )
        return candidate, actual
    return None, None
