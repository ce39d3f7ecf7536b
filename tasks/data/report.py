"""What generation produced and dropped: the report logged beside each split."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.data.dedup import distinct_ngram_ratio


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
class SplitsReport:
    reports: dict[str, GenerationReport]
    test_reused: bool

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: r.to_dict() for name, r in self.reports.items()}
        # A reused test split was not generated in this run: its report lives in its manifest.
        data["test_reused"] = self.test_reused
        return data
