"""Verified synthetic data: generate, verify, deduplicate, split, save with `datasets`, log.

`generate_examples` draws problems from a skill's templates (`tasks.data.skills`), renders each as
a ReAct trace in the one format (`agent.react_format`), optionally paraphrases the question
with a teacher, and keeps only examples that `verify_example` accepts: the trace re-parses,
every tool call re-runs to the recorded observation, and the final answer is the expected one.

`build_splits` writes train/eval from `data.seed` and the frozen TEST split from
`data.test_seed` with the test wording pool. The test split is generated once, stored with a
content hash, and reused from then on; a test split whose hash no longer checks out raises
`TestSetCorruptedError` instead of being silently regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, overload

import datasets

from agent.react_format import (
    ToolCall,
    build_messages,
    format_number,
    normalize_answer,
    parse_date,
    parse_trace,
    render_trace,
)
from agent.tools import CURRENCY_ALIASES, UNIT_ALIASES, Tool, default_tools, run_tool
from evolora.settings import DataSettings
from tasks.data.skills import FINAL_THOUGHT, LEVELS, SKILLS, Problem
from tasks.data.wording import reword

Split = Literal["train", "eval", "test"]
Paraphraser = Callable[[str], "str | None"]

# Bump when the example format changes: a new version means a new frozen test set.
FORMAT_VERSION = 1
NEAR_DUPLICATE_JACCARD = 0.85
REQUIRED_TEXT_FIELDS = ("id", "skill", "level", "question", "answer", "source")

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "skill": datasets.Value("string"),
        "level": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "tool_calls": [
            {
                "tool": datasets.Value("string"),
                "argument": datasets.Value("string"),
                "observation": datasets.Value("string"),
            }
        ],
        "source": datasets.Value("string"),
    }
)


class TestSetCorruptedError(RuntimeError):
    """The frozen test split on disk does not match its manifest."""

    __test__ = False  # not a pytest test class


@dataclass
class GenerationReport:
    """What generation produced and dropped; `to_dict()` is logged beside the data."""

    split: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    paraphrase_accepted: int = 0
    paraphrase_rejected: int = 0
    paraphrase_rejected_reasons: dict[str, int] = field(default_factory=dict)
    reworded: int = 0
    distinct_2: float = 0.0
    distinct_3: float = 0.0
    questions: list[str] = field(default_factory=list, repr=False)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def merge(self, other: GenerationReport) -> None:
        """Fold another report (another skill) into this one; diversity is recomputed."""
        for skill, levels in other.counts.items():
            mine = self.counts.setdefault(skill, {})
            for level, count in levels.items():
                mine[level] = mine.get(level, 0) + count
        for reason, count in other.dropped.items():
            self.drop(reason, count)
        self.paraphrase_accepted += other.paraphrase_accepted
        self.paraphrase_rejected += other.paraphrase_rejected
        self.reworded += other.reworded
        for reason, count in other.paraphrase_rejected_reasons.items():
            reasons = self.paraphrase_rejected_reasons
            reasons[reason] = reasons.get(reason, 0) + count
        self.questions.extend(other.questions)
        self.update_diversity()

    def update_diversity(self) -> None:
        self.distinct_2 = distinct_ngram_ratio(self.questions, 2)
        self.distinct_3 = distinct_ngram_ratio(self.questions, 3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("questions")
        data["total"] = sum(sum(levels.values()) for levels in self.counts.values())
        return data


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


@dataclass
class SplitsReport:
    reports: dict[str, GenerationReport]
    test_reused: bool

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: r.to_dict() for name, r in self.reports.items()}
        # A reused test split was not generated in this run: its report lives in its manifest.
        data["test_reused"] = self.test_reused
        return data


# ---------------------------------------------------------------------------- generation


def generate_examples(
    skill: str,
    n: int,
    *,
    split: Split,
    seed: int,
    hard_fraction: float,
    paraphrase: Paraphraser | None = None,
    paraphrase_fraction: float = 1.0,
    reword_fraction: float = 0.0,
    tools: dict[str, Tool] | None = None,
) -> tuple[list[dict[str, Any]], GenerationReport]:
    """`n` verified, deduplicated examples of one skill and the report of how they were made.

    The test split draws from the test wording pool, train and eval from the train pool.
    `round(n * hard_fraction)` examples are "hard" (two chained tool calls), the rest "easy".
    Train and eval questions the teacher did not rewrite are reworded by rule with
    probability `reword_fraction` (`tasks.data.wording`); test questions never are.
    """
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; known skills: {', '.join(SKILLS)}")
    if split not in ("train", "eval", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, eval or test")
    tools = tools if tools is not None else default_tools()
    pool = "test" if split == "test" else "train"
    # String seeds hash deterministically (sha512), unlike hash() of a tuple across runs.
    rng = random.Random(f"{seed}:{skill}:{split}")
    paraphrase_rng = random.Random(f"{seed}:{skill}:{split}:paraphrase")
    reword_rng = random.Random(f"{seed}:{skill}:{split}:reword")
    report = GenerationReport(split=split)
    examples: list[dict[str, Any]] = []
    seen = _DuplicateIndex()
    n_hard = round(n * hard_fraction)
    for level, wanted in (("easy", n - n_hard), ("hard", n_hard)):
        templates = SKILLS[skill].templates[(pool, level)]
        kept = 0
        for _attempt in range(max(50, wanted * 30)):
            if kept >= wanted:
                break
            template = rng.choice(templates)
            problem = template.recipe(rng)
            question = template.text.format(**problem.slots)
            source = "synthetic"
            if paraphrase is not None and paraphrase_rng.random() < paraphrase_fraction:
                rewritten, reason = _try_paraphrase(paraphrase, question)
                if rewritten is None:
                    report.paraphrase_rejected += 1
                    reasons = report.paraphrase_rejected_reasons
                    reasons[reason] = reasons.get(reason, 0) + 1
                else:
                    report.paraphrase_accepted += 1
                    question, source = rewritten, "paraphrased"
            if split != "test" and source == "synthetic" and reword_rng.random() < reword_fraction:
                reworded = reword(question, reword_rng, accept=_same_facts)
                if reworded != question:
                    question, source = reworded, "reworded"
                    report.reworded += 1
            duplicate = seen.check(question)
            if duplicate:
                report.drop(duplicate)
                continue
            example = _example(skill, level, split, question, problem, source)
            problem_reason = verify_example(example, tools)
            if problem_reason is not None:
                report.drop(problem_reason.split(":")[0])
                continue
            seen.add(question)
            examples.append(example)
            kept += 1
        if kept < wanted:
            report.drop("not enough distinct examples", wanted - kept)
        report.counts.setdefault(skill, {})[level] = kept
    report.questions = [example["question"] for example in examples]
    report.update_diversity()
    return examples, report


def _example(
    skill: str, level: str, split: str, question: str, problem: Problem, source: str
) -> dict[str, Any]:
    steps = [(c.thought, ToolCall(c.tool, c.argument), c.observation) for c in problem.calls]
    assistant = render_trace(steps, FINAL_THOUGHT, problem.answer)
    digest = hashlib.sha256(f"{split}\n{skill}\n{question}".encode()).hexdigest()[:12]
    return {
        "id": f"{split}-{skill}-{level}-{digest}",
        "skill": skill,
        "level": level,
        "question": question,
        "answer": normalize_answer(problem.answer),
        "messages": [*build_messages(question), {"role": "assistant", "content": assistant}],
        "tool_calls": [
            {"tool": c.tool, "argument": c.argument, "observation": c.observation}
            for c in problem.calls
        ],
        "source": source,
    }


def verify_example(example: Mapping[str, Any], tools: dict[str, Tool]) -> str | None:
    """None when the example is right, else the reason ("<kind>: <detail>").

    Re-parses the assistant text, re-runs every tool call with the real tools, and checks
    each observation, the recorded tool calls, and the final answer against the expected one.
    """
    messages = example.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return "malformed: the last message is not the assistant's"
    steps = parse_trace(messages[-1].get("content", ""), tool_names=tools)
    if not steps:
        return "unparseable: empty assistant text"
    for index, step in enumerate(steps, start=1):
        if step.error is not None:
            return f"unparseable: step {index}: {step.error}"
    *tool_steps, final = steps
    if final.final_answer is None:
        return "no final answer: the trace ends without a Final Answer"
    observations = []
    for index, step in enumerate(tool_steps, start=1):
        if step.action is None:  # a Final Answer before the last step ends parse_trace
            return f"unparseable: step {index} has no action"
        actual = run_tool(tools, step.action.tool, step.action.argument)
        if actual.startswith("Error:"):
            return f"tool error: step {index}: {actual}"
        if step.observation != actual:
            return (
                f"observation mismatch: step {index} says {step.observation!r}, "
                f"{step.action.tool} returns {actual!r}"
            )
        observations.append(actual)
    recorded = [
        (call.get("tool"), call.get("argument"), call.get("observation"))
        for call in example.get("tool_calls") or []
    ]
    parsed = [(s.action.tool, s.action.argument, s.observation) for s in tool_steps if s.action]
    if recorded != parsed:
        return "tool_calls mismatch: the tool_calls field differs from the trace"
    expected = example.get("answer")
    if normalize_answer(final.final_answer) != expected:
        return f"wrong final answer: {final.final_answer!r} is not {expected!r}"
    if expected not in {normalize_answer(observation) for observation in observations}:
        return f"ungrounded answer: no observation gives {expected!r}"
    return None


# ---------------------------------------------------------------------------- paraphrases

# Spellings of units and currencies, longest first so "british pounds" wins over "pounds".
_QUANTITY_WORDS = sorted(
    {
        **{alias: f"unit:{unit}" for alias, unit in UNIT_ALIASES.items() if len(alias) > 2},
        **{alias: f"money:{code}" for alias, code in CURRENCY_ALIASES.items()},
        "km": "unit:km",
        "mi": "unit:mi",
        "kg": "unit:kg",
        "lb": "unit:lb",
        "oz": "unit:oz",
        "ml": "unit:ml",
        "cm": "unit:cm",
        "mm": "unit:mm",
        "ft": "unit:ft",
        "yd": "unit:yd",
        "%": "percent",
        "percent": "percent",
        "percentage": "percent",
    }.items(),
    key=lambda item: -len(item[0]),
)
_WRITTEN_DATE_RE = re.compile(
    r"\b(?:January|February|March|April|May|June|July|August|September|October|November|"
    r"December)\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b|\b\d{4}-\d{2}-\d{2}\b",
    re.IGNORECASE,
)
_NUMBER_IN_TEXT_RE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
MAX_PARAPHRASE_CHARS = 400
_REACT_MARKERS = ("Thought:", "Action:", "Action Input:", "Observation:", "Final Answer:")


def question_facts(question: str) -> set[str]:
    """The numbers, dates, units and currencies a question states (what must survive)."""
    facts: set[str] = set()
    text = question

    def take_date(match: re.Match[str]) -> str:
        day = parse_date(match.group(0))
        facts.add(f"date:{day.isoformat() if day else match.group(0)}")
        return " "

    text = _WRITTEN_DATE_RE.sub(take_date, text)
    for match in _NUMBER_IN_TEXT_RE.finditer(text):
        raw = match.group(0).rstrip(",")
        try:
            facts.add(f"number:{format_number(float(raw.replace(',', '')))}")
        except ValueError:
            facts.add(f"number:{raw}")
    # "day of the week" names no quantity: its "day" and "week" are not units.
    lowered = re.sub(r"\bday of the week\b", " ", f" {text.lower()} ")
    for word, fact in _QUANTITY_WORDS:
        pattern = re.escape(word) if not word[0].isalpha() else rf"\b{re.escape(word)}\b"
        # Presence, not count: "12 km ... km" states one fact. Matched words are blanked
        # so "pounds" inside "british pounds" is not read again as the mass unit.
        lowered, found = re.subn(pattern, " ", lowered)
        if found:
            facts.add(fact)
    return facts


def check_paraphrase(original: str, candidate: str | None) -> str | None:
    """None when `candidate` may replace `original`, else why it may not."""
    if candidate is None or not candidate.strip():
        return "empty"
    text = candidate.strip()
    if "\n" in text:
        return "multi-line"
    if len(text) > min(MAX_PARAPHRASE_CHARS, 2 * len(original) + 40):
        return "too long"
    if any(marker in text for marker in _REACT_MARKERS):
        return "contains ReAct markers"
    if question_facts(text) != question_facts(original):
        return "changed numbers, dates or units"
    return None


def _same_facts(before: str, after: str) -> bool:
    return check_paraphrase(before, after) is None


def _try_paraphrase(paraphrase: Paraphraser, question: str) -> tuple[str | None, str]:
    try:
        candidate = paraphrase(question)
    except Exception as exc:  # a teacher failing must not stop generation
        return None, f"teacher error ({type(exc).__name__})"
    reason = check_paraphrase(question, candidate)
    if reason is not None:
        return None, reason
    assert candidate is not None
    return " ".join(candidate.split()), ""


# ---------------------------------------------------------------------------- duplicates


def normalize_question(question: str) -> str:
    """Lowercase words and numbers only: two questions equal here are exact duplicates."""
    return " ".join(re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", question.lower()))


def _ngrams(words: list[str], size: int) -> set[tuple[str, ...]]:
    if len(words) < size:
        return {tuple(words)}
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(first: set[Any], second: set[Any]) -> float:
    union = first | second
    return len(first & second) / len(union) if union else 1.0


class _DuplicateIndex:
    """Exact (normalized text) and near (word 3-gram Jaccard) duplicate detection."""

    def __init__(self, threshold: float = NEAR_DUPLICATE_JACCARD) -> None:
        self.threshold = threshold
        self.exact: set[str] = set()
        self.shingles: list[set[tuple[str, ...]]] = []

    def check(self, question: str) -> str | None:
        normalized = normalize_question(question)
        if normalized in self.exact:
            return "exact duplicate"
        grams = _ngrams(normalized.split(), 3)
        if any(jaccard(grams, other) >= self.threshold for other in self.shingles):
            return "near duplicate"
        return None

    def add(self, question: str) -> None:
        normalized = normalize_question(question)
        self.exact.add(normalized)
        self.shingles.append(_ngrams(normalized.split(), 3))


def deduplicate(
    rows: list[dict[str, Any]], report: GenerationReport, against: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Rows without exact/near duplicates of each other or of the `against` questions."""
    reserved = _DuplicateIndex()
    for question in against:
        reserved.add(question)
    index = _DuplicateIndex()
    kept = []
    for row in rows:
        if reserved.check(row["question"]):
            report.drop("overlaps a held-out split")
            continue
        duplicate = index.check(row["question"])
        if duplicate:
            report.drop(duplicate)
            continue
        index.add(row["question"])
        kept.append(row)
    return kept


def distinct_ngram_ratio(questions: list[str], size: int) -> float:
    """Distinct word n-grams over all n-grams of the questions (1.0: no repetition)."""
    total: list[tuple[str, ...]] = []
    for question in questions:
        words = normalize_question(question).split()
        total.extend(tuple(words[i : i + size]) for i in range(len(words) - size + 1))
    return round(len(set(total)) / len(total), 4) if total else 0.0


# ---------------------------------------------------------------------------- splits on disk


def dataset_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the canonical JSON of the rows, in order (key order does not matter)."""
    digest = hashlib.sha256()
    for row in rows:
        line = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _test_spec(data: DataSettings) -> dict[str, Any]:
    # Everything that decides the test set's content: a different spec is a different test set.
    return {
        "format_version": FORMAT_VERSION,
        "skills": list(data.skills),
        "test_per_skill": data.test_per_skill,
        "test_seed": data.test_seed,
        "hard_fraction": data.hard_fraction,
    }


def build_splits(
    data: DataSettings, data_dir: Path, paraphrase: Paraphraser | None = None
) -> SplitBundle:
    """Train, eval and the frozen test split, saved under `data_dir/datasets/`.

    The test split is reused when a saved one with the same spec exists (its content hash
    must check out, else `TestSetCorruptedError`); it never sees the teacher, so it does not
    depend on which teacher ran. Train and eval never contain a test question.
    """
    unknown = [skill for skill in data.skills if skill not in SKILLS]
    if unknown:
        raise ValueError(
            f"unknown skill(s) {unknown} in data.skills; known skills: {', '.join(SKILLS)}"
        )
    root = Path(data_dir) / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    tools = default_tools()

    test_path, test_hash = _find_test_split(root, _test_spec(data))
    test_reused = test_path is not None
    test_report = GenerationReport(split="test")
    if test_path is None:
        rows = _generate_split(
            data, "test", data.test_per_skill, data.test_seed, None, tools, test_report
        )
        test_hash = dataset_hash(rows)
        test_path = _save_split(
            root,
            "test",
            rows,
            test_hash,
            {"spec": _test_spec(data), "report": test_report.to_dict()},
        )
    test = load_split(test_path)
    test_questions = list(test["question"])

    train_report = GenerationReport(split="train")
    train_rows = _generate_split(
        data, "train", data.train_per_skill, data.seed, paraphrase, tools, train_report
    )
    train_rows = deduplicate(train_rows, train_report, against=test_questions)
    eval_report = GenerationReport(split="eval")
    eval_rows = _generate_split(
        data, "eval", data.eval_per_skill, data.seed, None, tools, eval_report
    )
    eval_rows = deduplicate(
        eval_rows, eval_report, against=[*test_questions, *(r["question"] for r in train_rows)]
    )
    # The guarantee the whole evaluation rests on, checked on what is about to be saved.
    overlap = {normalize_question(q) for q in test_questions} & {
        normalize_question(r["question"]) for r in train_rows
    }
    assert not overlap, f"train and test share questions: {sorted(overlap)[:3]}"

    paths = {"test": test_path}
    hashes = {"test": str(test_hash)}
    for name, rows, report in (
        ("train", train_rows, train_report),
        ("eval", eval_rows, eval_report),
    ):
        _recount(report, rows)
        hashes[name] = dataset_hash(rows)
        extra = {"seed": data.seed, "report": report.to_dict()}
        paths[name] = _save_split(root, name, rows, hashes[name], extra)
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


def save_split(root: Path, name: str, rows: list[dict[str, Any]],
               extra: dict[str, Any] | None = None) -> tuple[Path, str]:
    """Save `rows` as split `name` under `root` (atomically); returns its folder and hash."""
    content_hash = dataset_hash(rows)
    return _save_split(root, name, rows, content_hash, extra or {}), content_hash


def _save_split(
    root: Path, name: str, rows: list[dict[str, Any]], content_hash: str, extra: dict[str, Any]
) -> Path:
    """Save atomically under `root/<name>-<hash12>/`; an existing identical one is kept."""
    final = root / f"{name}-{content_hash[:12]}"
    if final.exists():
        return final
    staging = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        # One shard always: datasets writes zero shards for an empty split and cannot reload it.
        _to_dataset(rows).save_to_disk(str(staging), num_shards=1)
        manifest = {
            "name": name,
            "content_hash": content_hash,
            "rows": len(rows),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.rename(staging, final)  # atomic on one filesystem: readers see all or nothing
        except OSError:
            if not final.exists():
                raise
            # Another process saved the same content first; theirs is identical.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    # from_list([]) drops the schema; an empty split (eval_per_skill=0) must keep its columns.
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


# ---------------------------------------------------------------------------- loading


def validate_row(row: Mapping[str, Any]) -> list[str]:
    """Every problem with one row, each naming its field (empty: the row is fine)."""
    problems = []
    for name in REQUIRED_TEXT_FIELDS:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"field {name!r} must be a non-empty string (got {value!r})")
    if isinstance(row.get("skill"), str) and row["skill"] and row["skill"] not in SKILLS:
        problems.append(f"field 'skill' is {row['skill']!r}; known: {', '.join(SKILLS)}")
    if isinstance(row.get("level"), str) and row["level"] and row["level"] not in LEVELS:
        problems.append(f"field 'level' is {row['level']!r}; expected easy or hard")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append("field 'messages' must be a non-empty list")
    elif not all(
        isinstance(m, Mapping) and m.get("role") and isinstance(m.get("content"), str)
        for m in messages
    ):
        problems.append("field 'messages' has an entry without role and content")
    elif messages[-1].get("role") != "assistant":
        problems.append("field 'messages' must end with an assistant turn")
    if not isinstance(row.get("tool_calls"), list):
        problems.append("field 'tool_calls' must be a list")
    return problems


@overload
def load_split(path: str | Path, *, skip_invalid: Literal[False] = False) -> datasets.Dataset: ...
@overload
def load_split(
    path: str | Path, *, skip_invalid: Literal[True]
) -> tuple[datasets.Dataset, int]: ...
def load_split(
    path: str | Path, *, skip_invalid: bool = False
) -> datasets.Dataset | tuple[datasets.Dataset, int]:
    """A saved split, every row validated.

    A broken row raises ValueError naming each bad row's index and field (all of them, at
    once). With `skip_invalid=True` the broken rows are dropped and `(dataset, n_skipped)`
    is returned instead.
    """
    dataset = datasets.Dataset.load_from_disk(str(path))
    bad: dict[int, list[str]] = {}
    for index, row in enumerate(dataset):
        problems = validate_row(row)
        if problems:
            bad[index] = problems
    if skip_invalid:
        if bad:
            dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
        return dataset, len(bad)
    if bad:
        lines = [
            f"  row {index}: {problem}" for index, problems in bad.items() for problem in problems
        ]
        shown = "\n".join(lines[:20]) + (
            f"\n  ... {len(lines) - 20} more" if len(lines) > 20 else ""
        )
        raise ValueError(
            f"{len(bad)} invalid row(s) in split {path}:\n{shown}\n"
            "(fix: regenerate the split, or load it with skip_invalid=True to drop them)"
        )
    return dataset


# ---------------------------------------------------------------------------- MLflow


def log_dataset_to_mlflow(
    dataset: datasets.Dataset,
    name: str,
    content_hash: str,
    context: str,
    source: str | Path | None = None,
) -> None:
    """Log `dataset` as an input of the active MLflow run, named and digested by its hash.

    MLflow keeps digests of at most 36 characters; the full sha256 goes into an input tag.
    """
    import mlflow
    import mlflow.data

    kwargs: dict[str, Any] = {"name": name, "digest": content_hash[:32]}
    if source is not None:
        kwargs["source"] = str(source)
    with warnings.catch_warnings():
        # A local path matches two equivalent local source kinds; MLflow warns and picks one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        mlflow_dataset = mlflow.data.from_huggingface(dataset, **kwargs)
    mlflow.log_input(mlflow_dataset, context=context, tags={"evolora.content_hash": content_hash})
