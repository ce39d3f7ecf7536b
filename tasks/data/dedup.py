"""Duplicate questions: normalized text, word 3-gram Jaccard, and n-gram diversity."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.data.report import GenerationReport

NEAR_DUPLICATE_JACCARD = 0.85


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


class DuplicateIndex:
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
    reserved = DuplicateIndex()
    for question in against:
        reserved.add(question)
    index = DuplicateIndex()
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
