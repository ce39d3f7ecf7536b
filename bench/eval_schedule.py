"""How the agent's problems are scheduled on llama.cpp's slots: in rounds, or each run on
its own. Same adapter, same problems, same engine instance, one run.

    .venv/bin/python bench/eval_schedule.py --config demo --adapter FOLDER [--split eval]

In rounds (the loop's batched mode, what the transformers engine needs) every problem's
step waits for the slowest reply of its round; on its own, a run takes its next step as soon
as its reply is back. Prints ONE JSON object: problems/s of each, the speedup, both
accuracies, and how many runs took identical steps to the same answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolora.logs import configure_logging
from evolora.models import resolve_base_model
from evolora.settings import load_settings


class InRounds:
    """The engine's adapter view without its concurrency: the loop falls back to rounds."""

    def __init__(self, view: Any) -> None:
        self.view = view

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return self.view.chat_prompt(messages, assistant_prefix)

    def generate(self, prompts: list[str], **kwargs: Any) -> list[str]:
        return self.view.generate(prompts, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default="demo")
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--split", default="eval", choices=["eval", "test", "continuity"])
    args = parser.parse_args()
    configure_logging()  # our events to stderr: stdout is the one JSON object

    from agent.loop import run_agent_batch
    from agent.tools import default_tools
    from engines.engine import AdapterView, open_engine
    from tasks.data import build_splits, load_split
    from tasks.evaluate.runner import BATCH_GENERATION_TIMEOUT_S
    from tasks.evaluate.scoring import score_runs

    settings = load_settings(args.config)
    model_path = resolve_base_model(settings.model.base, settings.paths.models_dir)
    bundle = build_splits(settings.data, settings.paths.data_dir)
    rows = [dict(r) for r in load_split(bundle.paths[args.split])]
    questions = [r["question"] for r in rows]
    engine = open_engine(settings, model_path, adapters={"candidate": args.adapter},
                         generation_timeout_s=BATCH_GENERATION_TIMEOUT_S)
    view = AdapterView(engine, "candidate")
    report: dict[str, Any] = {"config": settings.name, "split": args.split,
                              "problems": len(rows), "slots": settings.serving.parallel_slots}
    outcomes = {}
    try:
        run_agent_batch(view, questions[:4], default_tools(), max_steps=1,
                        max_new_tokens=8)  # warm the instance up
        for name, runtime in (("rounds", InRounds(view)), ("each_on_its_own", view)):
            started = time.perf_counter()
            runs = run_agent_batch(runtime, questions, default_tools(),
                                   max_new_tokens=settings.model.max_new_tokens)
            wall = time.perf_counter() - started
            scores, scored = score_runs(runs, rows, args.split)
            outcomes[name] = [(r["steps"], r["predicted"], r["error"]) for r in scored]
            report[name] = {"problems_per_s": round(len(rows) / wall, 3),
                            "wall_s": round(wall, 1),
                            "accuracy": round(scores[f"{args.split}_accuracy"], 3)}
    finally:
        engine.close()
    report["speedup"] = round(report["each_on_its_own"]["problems_per_s"]
                              / report["rounds"]["problems_per_s"], 2)
    report["identical_runs"] = sum(a == b for a, b in zip(outcomes["rounds"],
                                                          outcomes["each_on_its_own"],
                                                          strict=True))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
