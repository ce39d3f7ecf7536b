"""Tonight's training mix: template rows, the champion's own attempts, harvested serving
traces and a replay of earlier nights, each within its share.

A night that trained on its own outputs alone would drift (model collapse), one that
forgot earlier nights' rows would forget what they taught, and one key's traces must not
fill the mix. So the mix has a fixed size (the night's template rows, what
`data.train_per_skill` asks for) and each source a share of it (`data.self_max_share`,
`data.harvest_max_share`, `data.replay_share`, `data.template_max_share`); template rows
fill what the others leave. How diverse the result is gets measured and logged with it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

from evolora.settings import DataSettings
from tasks.data import GenerationReport, deduplicate
from tasks.data.dedup import distinct_ngram_ratio, normalize_question
from tasks.harvest.traces import HARVEST_SOURCE
from tasks.records import MixReport, SelfAttemptReport

TEMPLATE, SELF, HARVESTED, REPLAY = "template", "self", "harvested", "replay"


def compose_mix(train_rows: list[dict[str, Any]], pool_rows: list[dict[str, Any]],
                replay_rows: list[dict[str, Any]], data: DataSettings, *, seed: int,
                self_attempts: SelfAttemptReport | None = None
                ) -> tuple[list[dict[str, Any]], MixReport]:
    """The night's rows and their report.

    `train_rows` is the night's train split (template rows, and harvested ones marked by
    their source), `pool_rows` what the self-attempts gave (own traces and the failures'
    program traces), `replay_rows` earlier nights' training rows to draw the replay from.
    """
    rng = random.Random(f"mix:{seed}")
    template = [r for r in train_rows if r["source"] != HARVEST_SOURCE]
    harvested = [r for r in train_rows if r["source"] == HARVEST_SOURCE]
    size = len(template)
    seen = [r["question"] for r in train_rows]
    pool = deduplicate(list(pool_rows), GenerationReport(split="self"), against=seen)
    tonight = {normalize_question(q) for q in [*seen, *(r["question"] for r in pool)]}
    replay = [r for r in replay_rows if normalize_question(r["question"]) not in tonight]
    replay = list({normalize_question(r["question"]): r for r in replay}.values())

    wanted = {SELF: math.floor(data.self_max_share * size),
              HARVESTED: math.floor(data.harvest_max_share * size),
              REPLAY: math.floor(data.replay_share * size)}
    chosen = {SELF: _sample(pool, wanted[SELF], rng),
              HARVESTED: harvested[:wanted[HARVESTED]],  # thumbs-up and newest come first
              REPLAY: _sample(replay, wanted[REPLAY], rng)}
    room = size - sum(len(rows) for rows in chosen.values())
    chosen[TEMPLATE] = _sample(template, min(room, math.floor(data.template_max_share * size)),
                               rng)
    available = {TEMPLATE: len(template), SELF: len(pool), HARVESTED: len(harvested),
                 REPLAY: len(replay)}
    rows = [row for source in (TEMPLATE, SELF, HARVESTED, REPLAY) for row in chosen[source]]
    rng.shuffle(rows)
    total = len(rows) or 1
    report = MixReport(
        rows=len(rows),
        by_source={source: len(chosen[source]) for source in chosen},
        shares={source: round(len(chosen[source]) / total, 4) for source in chosen},
        capped={source: available[source] - len(chosen[source]) for source in chosen
                if available[source] > len(chosen[source])},
        by_skill_level=dict(sorted(Counter(f"{r['skill']}_{r['level']}" for r in rows).items())),
        diversity=mix_diversity(rows),
        self_attempts=self_attempts,
    )
    return rows, report


def mix_diversity(rows: list[dict[str, Any]]) -> dict[str, float]:
    """How varied the rows are: distinct word 2- and 3-grams of the questions, the share of
    distinct questions and of distinct traces, and the evenness of skill x level cells
    (normalised entropy: 1 when every cell has as many rows)."""
    questions = [r["question"] for r in rows]
    traces = [r["messages"][-1]["content"] for r in rows]
    cells = Counter(f"{r['skill']}_{r['level']}" for r in rows)
    entropy = -sum(n / len(rows) * math.log(n / len(rows)) for n in cells.values()) if rows else 0
    evenness = entropy / math.log(len(cells)) if len(cells) > 1 else 0.0
    return {
        "distinct_2": distinct_ngram_ratio(questions, 2),
        "distinct_3": distinct_ngram_ratio(questions, 3),
        "distinct_questions": round(len({normalize_question(q) for q in questions})
                                    / max(len(rows), 1), 4),
        "distinct_traces": round(len(set(traces)) / max(len(rows), 1), 4),
        "cell_evenness": round(evenness, 4),
    }


def mix_metrics(report: MixReport) -> dict[str, float]:
    """The report as MLflow metrics (`mix_rows_self`, `mix_share_replay`, `mix_distinct_2`...)."""
    metrics = {"mix_rows": float(report.rows)}
    metrics.update({f"mix_rows_{k}": float(v) for k, v in report.by_source.items()})
    metrics.update({f"mix_share_{k}": v for k, v in report.shares.items()})
    metrics.update({f"mix_{k}": v for k, v in report.diversity.items()})
    return metrics


def _sample(rows: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    return rng.sample(rows, max(0, min(n, len(rows))))
