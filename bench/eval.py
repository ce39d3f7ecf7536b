"""Evaluation engines compared: the same adapter on the same frozen test set, llama.cpp vs
transformers, in one run.

    .venv/bin/python bench/eval.py --config demo --adapter data/adapters/champ

Prints ONE JSON object: problems/s of each engine and the speedup, both accuracies, the
paired comparison (problems one engine solved and the other did not) and how many greedy
first ReAct steps were identical (the engines' parity on real problems). Without
`--adapter` the config's registry champion is downloaded and used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolora.logs import configure_logging
from evolora.models import resolve_base_model
from evolora.settings import Settings, load_settings

ENGINES = ("llamacpp", "transformers")


def with_engine(settings: Settings, engine: str, mlruns: Path) -> Settings:
    serving = settings.serving.model_copy(update={"engine": engine})
    paths = settings.paths.model_copy(update={"mlruns_dir": mlruns, "tracking_uri": None})
    return settings.model_copy(update={"serving": serving, "paths": paths})


def champion_adapter(settings: Settings, dest: Path) -> Path:
    from evolora.tracking import setup_mlflow
    from evolora.vocabulary import CHAMPION
    from tasks.registry import download_version, get_alias

    client = setup_mlflow(settings)
    champion = get_alias(client, settings.evolution.registry_model_name, CHAMPION)
    if champion is None:
        raise SystemExit("the registry has no champion; pass --adapter FOLDER")
    return download_version(client, settings.evolution.registry_model_name,
                            str(champion.version), dest)


def first_steps(settings: Settings, model_path: str, adapter: Path, questions: list[str],
                max_new_tokens: int) -> list[str]:
    """Each question's greedy first ReAct step on the configured engine."""
    from agent.react_format import STOP_SEQUENCE, build_messages
    from engines.engine import open_engine

    engine = open_engine(settings, model_path, adapters={"candidate": adapter})
    try:
        prompts = [engine.chat_prompt(build_messages(q)) for q in questions]
        return engine.generate(prompts, max_new_tokens=max_new_tokens, stop=[STOP_SEQUENCE],
                               adapter="candidate")
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default="demo")
    parser.add_argument("--adapter", type=Path, help="A PEFT adapter folder (default: the "
                        "registry's champion).")
    parser.add_argument("--limit", type=int, help="Only the first N test problems.")
    parser.add_argument("--slots", type=int, help="llama.cpp parallel slots (default: the "
                        "config's serving.parallel_slots).")
    args = parser.parse_args()
    configure_logging()  # our events to stderr: stdout is the one JSON object

    from evolora.tracking import setup_mlflow
    from tasks.data import build_splits
    from tasks.evaluate import evaluate_adapters

    settings = load_settings(args.config)
    if args.slots:
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(
            update={"parallel_slots": args.slots})})
    model_path = str(resolve_base_model(settings.model.base, settings.paths.models_dir))
    rows = list(build_splits(settings.data, settings.paths.data_dir).test)[:args.limit]
    with tempfile.TemporaryDirectory(prefix="evolora-bench-eval-") as folder:
        root = Path(folder)
        adapter = args.adapter or champion_adapter(settings, root / "champion")
        results, seconds, steps = {}, {}, {}
        for engine in ENGINES:
            engine_settings = with_engine(settings, engine, root / "mlruns")
            setup_mlflow(engine_settings)
            started = time.perf_counter()
            results[engine] = evaluate_adapters(engine_settings, model_path, rows,
                                                {"candidate": adapter})["candidate"]
            seconds[engine] = time.perf_counter() - started
            steps[engine] = first_steps(engine_settings, model_path, adapter,
                                        [r["question"] for r in rows],
                                        settings.model.max_new_tokens)
    correct = {e: [row["correct"] for row in results[e].rows] for e in ENGINES}
    only = {e: sum(a and not b for a, b in zip(correct[e], correct[other], strict=True))
            for e, other in zip(ENGINES, reversed(ENGINES), strict=True)}
    same_steps = sum(a == b for a, b in zip(steps["llamacpp"], steps["transformers"],
                                            strict=True))
    per_s = {e: len(rows) / seconds[e] for e in ENGINES}
    print(json.dumps({
        "config": settings.name, "adapter": str(adapter), "test_problems": len(rows),
        "problems_per_s_llamacpp": round(per_s["llamacpp"], 3),
        "problems_per_s_transformers": round(per_s["transformers"], 3),
        "speedup": round(per_s["llamacpp"] / per_s["transformers"], 2),
        "accuracy_llamacpp": round(results["llamacpp"].accuracy, 4),
        "accuracy_transformers": round(results["transformers"].accuracy, 4),
        "accuracy_diff_points": round(100 * (results["llamacpp"].accuracy
                                             - results["transformers"].accuracy), 2),
        "solved_only_by_llamacpp": only["llamacpp"],
        "solved_only_by_transformers": only["transformers"],
        "first_step_identical": same_steps,
        "first_step_identical_fraction": round(same_steps / max(len(rows), 1), 4),
        "eval_wall_s": {e: round(s, 1) for e, s in seconds.items()},
        "slots": settings.serving.parallel_slots,
    }, indent=1))


if __name__ == "__main__":
    main()
