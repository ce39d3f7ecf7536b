"""Verified synthetic data: every skill verifies, tampering is caught, the test set is frozen."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import mlflow
import pytest

from agent.react_format import ToolCall, parse_trace, render_trace
from agent.tools import default_tools
from evolora.settings import DataSettings, load_settings
from tasks.data import (
    GenerationReport,
    TestSetCorruptedError,
    build_splits,
    dataset_hash,
    deduplicate,
    load_split,
    log_dataset_to_mlflow,
    verify_example,
)
from tasks.data.checks import check_paraphrase
from tasks.data.dedup import normalize_question
from tasks.data.generate import generate_examples
from tasks.data.skills import LEVELS, SKILLS

SKILL_NAMES = sorted(SKILLS)
TOOLS = default_tools()


def small_settings(**overrides: Any) -> DataSettings:
    values: dict[str, Any] = {
        "skills": SKILL_NAMES,
        "train_per_skill": 12,
        "eval_per_skill": 4,
        "test_per_skill": 6,
    }
    return DataSettings(**{**values, **overrides})


@pytest.mark.parametrize("skill", SKILL_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_skill_and_level_generates_verified_examples(skill: str, split: str) -> None:
    examples, report = generate_examples(skill, 20, split=split, seed=3, hard_fraction=0.5)

    assert report.counts[skill] == {"easy": 10, "hard": 10}
    for example in examples:
        assert verify_example(example, TOOLS) is None
        assert example["skill"] == skill and example["source"] == "synthetic"
        assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
        calls = example["tool_calls"]
        assert len(calls) == 1 if example["level"] == "easy" else len(calls) >= 2
    assert {e["level"] for e in examples} == set(LEVELS)
    assert 0 < report.distinct_2 <= 1 and 0 < report.distinct_3 <= 1


def test_generation_is_deterministic_and_rejects_unknown_skills() -> None:
    first, _ = generate_examples("dates", 8, split="train", seed=1, hard_fraction=0.5)
    second, _ = generate_examples("dates", 8, split="train", seed=1, hard_fraction=0.5)
    assert first == second
    with pytest.raises(ValueError, match=r"known skills: .*arithmetic"):
        generate_examples("memory", 1, split="train", seed=0, hard_fraction=0.5)


def _hard_example() -> dict[str, Any]:
    examples, _ = generate_examples("units", 1, split="train", seed=0, hard_fraction=1.0)
    return examples[0]


def _retrace(example: dict[str, Any], observations: list[str] | None, answer: str) -> None:
    steps = parse_trace(example["messages"][-1]["content"])
    observations = observations or [s.observation or "" for s in steps[:-1]]
    rendered = [(s.thought, s.action, o) for s, o in zip(steps[:-1], observations, strict=True)]
    example["messages"][-1]["content"] = render_trace(rendered, steps[-1].thought, answer)


def test_a_wrong_observation_is_rejected_with_a_reason() -> None:
    example = _hard_example()
    tampered = copy.deepcopy(example)
    observations = [call["observation"] for call in tampered["tool_calls"]]
    observations[0] = "999 m"
    _retrace(tampered, observations, example["messages"][-1]["content"].split(": ")[-1])

    assert verify_example(tampered, TOOLS).startswith("observation mismatch: step 1")


def test_a_wrong_final_answer_is_rejected_with_a_reason() -> None:
    tampered = _hard_example()
    _retrace(tampered, None, "12345")
    assert verify_example(tampered, TOOLS).startswith("wrong final answer")

    wrong_expected = _hard_example()
    wrong_expected["answer"] = "1"
    assert verify_example(wrong_expected, TOOLS).startswith("wrong final answer")


def test_a_trace_that_does_not_match_its_tool_calls_or_parse_is_rejected() -> None:
    example = _hard_example()
    example["tool_calls"] = example["tool_calls"][:1]
    assert verify_example(example, TOOLS).startswith("tool_calls mismatch")

    broken = _hard_example()
    broken["messages"][-1]["content"] = "Thought: I just know.\nAction: calculator\n"
    assert verify_example(broken, TOOLS).startswith("unparseable")

    unknown_tool = _hard_example()
    steps = [("t", ToolCall("search", "x"), "y")]
    unknown_tool["messages"][-1]["content"] = render_trace(steps, "t", "y")
    assert "unknown tool" in verify_example(unknown_tool, TOOLS)


def test_paraphrases_must_keep_every_number_date_and_unit() -> None:
    question = "Convert 12.5 kilometers to miles."
    assert check_paraphrase(question, "How many miles is 12.5 km?") is None
    assert check_paraphrase(question, "Convert 13 kilometers to miles.") is not None
    assert check_paraphrase(question, "Convert 12.5 kilometers to feet.") is not None
    assert check_paraphrase(question, "") == "empty"
    assert check_paraphrase(question, None) == "empty"
    assert check_paraphrase(question, "Convert 12.5 km to mi. " * 20) == "too long"
    assert check_paraphrase(question, "Final Answer: 12.5 km in miles") is not None
    dated = "What date is 45 days after March 5, 2024?"
    assert check_paraphrase(dated, "Which day is 45 days later than 2024-03-05?") is None
    assert check_paraphrase(dated, "Which day is 45 days later than 2024-03-06?") is not None


def test_generate_examples_accepts_good_and_rejects_bad_paraphrases() -> None:
    def good(question: str) -> str:
        return f"Please answer: {question}"

    def changes_a_number(question: str) -> str:
        return question.replace("1", "7").replace("2", "8") + " 99"

    def garbage(question: str) -> None:
        return None

    examples, report = generate_examples(
        "arithmetic", 6, split="train", seed=0, hard_fraction=0.5, paraphrase=good
    )
    assert report.paraphrase_accepted == 6 and report.paraphrase_rejected == 0
    assert all(e["source"] == "paraphrased" for e in examples)
    assert all(e["question"].startswith("Please answer: ") for e in examples)
    assert all(verify_example(e, TOOLS) is None for e in examples)

    for bad in (changes_a_number, garbage):
        examples, report = generate_examples(
            "arithmetic", 6, split="train", seed=0, hard_fraction=0.5, paraphrase=bad
        )
        assert report.paraphrase_accepted == 0 and report.paraphrase_rejected == 6
        assert all(e["source"] == "synthetic" for e in examples)


def test_duplicates_are_dropped_and_counted() -> None:
    rows = [
        {"question": "What is 12 times 7?"},
        {"question": "what is 12 times 7"},  # exact after normalization
        {"question": "What is 12 times 7 ?"},
        {"question": "Well, what is 12 times 7 exactly, then, my friend, tell me?"},
        {"question": "Well, what is 12 times 7 exactly, then, my friend, tell me now?"},  # near
        {"question": "What is 13 times 7?"},
    ]
    report = GenerationReport(split="train")
    kept = deduplicate(rows, report, against=["What is 13 times 7?"])

    assert [r["question"] for r in kept] == [rows[0]["question"], rows[3]["question"]]
    assert report.dropped == {
        "exact duplicate": 2,
        "near duplicate": 1,
        "overlaps a held-out split": 1,
    }


def test_splits_are_disjoint_and_the_test_split_is_frozen(tmp_path: Path) -> None:
    bundle = build_splits(small_settings(), tmp_path)

    train_questions = {normalize_question(q) for q in bundle.train["question"]}
    test_questions = {normalize_question(q) for q in bundle.test["question"]}
    assert not train_questions & test_questions
    assert len(bundle.test) == 6 * len(SKILL_NAMES) and not bundle.test_reused
    assert bundle.test_path.name == f"test-{bundle.hashes['test'][:12]}"
    assert dataset_hash(bundle.test.to_list()) == bundle.hashes["test"]
    # Test wordings come from a pool that training never sees.
    train_starts = {q.split()[0] for q in bundle.train["question"]}
    assert any(q.split()[0] not in train_starts for q in bundle.test["question"])
    assert not list((tmp_path / "datasets").glob(".tmp-*"))

    before = {p.name: p.read_bytes() for p in bundle.test_path.iterdir()}
    again = build_splits(small_settings(seed=7, train_per_skill=5), tmp_path)

    assert again.test_reused and again.test_path == bundle.test_path
    assert {p.name: p.read_bytes() for p in again.test_path.iterdir()} == before
    assert again.hashes["test"] == bundle.hashes["test"]
    assert again.hashes["train"] != bundle.hashes["train"]


# configs/tiny.yaml's splits with no teacher, recorded before the data package was split into
# modules and its templates moved to YAML. The same config must give the same data: a change
# here means every frozen test set built so far no longer matches what the code generates.
TINY_HASHES = {
    "train": "49056da598587e3ac2c6882be76d3fff2dfcb4578c2e0fe0d9cb54fe1de04b40",
    "eval": "11f6f571ebf4f834ac0d4ed1d3adbbb1f9f55773e8fa83f501ee7746580aee0a",
    "test": "c96bf686c9b084b5b33d2d1482b30519bb9a08445c272bc8be31c971294cf748",
}


def test_the_tiny_config_gives_the_same_splits_as_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)
    bundle = build_splits(load_settings("tiny").data, tmp_path, paraphrase=None)

    assert bundle.hashes == TINY_HASHES
    assert (len(bundle.train), len(bundle.eval), len(bundle.test)) == (48, 12, 12)


def test_train_hard_fraction_changes_the_training_mix_only(tmp_path: Path) -> None:
    first = build_splits(small_settings(), tmp_path)
    harder = build_splits(small_settings(train_hard_fraction=0.75), tmp_path)

    def hard_share(split: Any) -> float:
        return sum(level == "hard" for level in split["level"]) / len(split)

    assert hard_share(first.train) == 0.5
    assert hard_share(harder.train) == 0.75  # 9 of each skill's 12
    assert hard_share(harder.eval) == 0.5  # fitness is scored like the test set
    # The frozen test set's spec does not include the training mix: it is reused as it was.
    assert harder.test_reused and harder.hashes["test"] == first.hashes["test"]


def test_a_tampered_test_split_raises_instead_of_regenerating(tmp_path: Path) -> None:
    bundle = build_splits(small_settings(), tmp_path)
    rows = bundle.test.to_list()
    rows[0]["answer"] = "0"
    staging = tmp_path / "staging"
    datasets.Dataset.from_list(rows).save_to_disk(str(staging))
    manifest = (bundle.test_path / "manifest.json").read_bytes()
    shutil.rmtree(bundle.test_path)
    shutil.copytree(staging, bundle.test_path)
    (bundle.test_path / "manifest.json").write_bytes(manifest)

    with pytest.raises(TestSetCorruptedError, match="was modified"):
        build_splits(small_settings(), tmp_path)

    (bundle.test_path / "manifest.json").write_text("{not json")
    with pytest.raises(TestSetCorruptedError, match="unreadable manifest"):
        build_splits(small_settings(), tmp_path)


def test_build_splits_rejects_unknown_skills(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown skill"):
        build_splits(small_settings(skills=["memory"]), tmp_path)


def test_load_split_names_the_broken_row_or_skips_it(tmp_path: Path) -> None:
    examples, _ = generate_examples("percent", 4, split="train", seed=0, hard_fraction=0.5)
    examples[2]["level"] = "medium"
    examples[3]["messages"] = examples[3]["messages"][:2]  # ends with the user turn
    path = tmp_path / "broken"
    datasets.Dataset.from_list(examples).save_to_disk(str(path))

    with pytest.raises(ValueError) as caught:
        load_split(path)
    message = str(caught.value)
    assert "row 2: field 'level'" in message
    assert "row 3: field 'messages' must end with an assistant turn" in message

    dataset, skipped = load_split(path, skip_invalid=True)
    assert skipped == 2 and len(dataset) == 2


def test_datasets_are_logged_to_mlflow_as_run_inputs(tmp_path: Path) -> None:
    bundle = build_splits(small_settings(eval_per_skill=0), tmp_path / "data")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("data-test")
    try:
        with mlflow.start_run() as run:
            log_dataset_to_mlflow(bundle.train, "evolora-train", bundle.hashes["train"], "training")
            log_dataset_to_mlflow(
                bundle.test,
                "evolora-test",
                bundle.hashes["test"],
                "testing",
                source=bundle.test_path,
            )
        inputs = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    finally:
        mlflow.set_tracking_uri(None)

    logged = {i.dataset.name: i for i in inputs}
    assert set(logged) == {"evolora-train", "evolora-test"}
    assert logged["evolora-test"].dataset.digest == bundle.hashes["test"][:32]
    tags = {t.key: t.value for t in logged["evolora-test"].tags}
    assert tags["mlflow.data.context"] == "testing"
    assert tags["evolora.content_hash"] == bundle.hashes["test"]
    assert len(bundle.eval) == 0
