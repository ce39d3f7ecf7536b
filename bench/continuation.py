"""How fast a night should continue its champion: the same night trained at several peak
learning rates, each paired with the champion on the frozen test set.

    .venv/bin/python bench/continuation.py --config demo --scales 1,0.3,0.1
    .venv/bin/python bench/continuation.py --cycle data/cycles/20261207-125541 --steps 52

Prints ONE JSON object. The cycle's warm start (the champion it continued) is trained again
on that night's training mix with the night generalist's seed and steps, once per scale of
`train.learning_rate` (scale 1 is the old full-rate continuation, the baseline); the champion
and every continuation are evaluated in this run, on the same engine, test set and greedy
decoding, and each continuation is put through the real paired gate against the champion.
Its MLflow runs go to a throwaway store. About 10 minutes of training and 5 of evaluation
per scale on 2 cores with the demo config.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolora.logs import configure_logging
from evolora.models import resolve_base_model
from evolora.settings import Settings, load_settings
from flows.cycle_journal import STATE_FILE, CycleJournal


def newest_warm_cycle(settings: Settings) -> Path:
    for state in sorted((settings.paths.data_dir / "cycles").glob(f"*/{STATE_FILE}"),
                        reverse=True):
        journal = CycleJournal.load(state.parent)
        if journal is not None and journal.warm_start is not None and journal.data:
            return state.parent
    raise SystemExit("no cycle under data/cycles continued a champion; run two nights first "
                     "(`evolora cycle -c demo --nights 2`)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--cycle", type=Path, help="a cycle that continued a champion "
                        "(default: the newest)")
    parser.add_argument("--scales", default="1,0.3,0.1",
                        help="fractions of train.learning_rate to peak at")
    parser.add_argument("--steps", type=int, help="default: the night generalist's steps")
    args = parser.parse_args()
    configure_logging()  # our events to stderr: stdout is the one JSON object

    from tasks.data import load_split
    from tasks.evaluate import evaluate_adapters
    from tasks.paired import compare_by_group, problem_groups
    from tasks.registry import gate
    from tasks.train import train_adapter
    from tasks.train.trainer import peak_learning_rate

    settings = load_settings(args.config)
    cycle = args.cycle or newest_warm_cycle(settings)
    journal = CycleJournal.load(cycle)
    if journal is None or journal.data is None or journal.warm_start is None:
        raise SystemExit(f"{cycle} did not continue a champion (or was written by an older "
                         "evolora)")
    champion = journal.warm_start
    generalist = next((m for m in journal.members.values()
                       if m.role == "generalist" and m.generation == 0), None)
    steps = args.steps or (generalist.recipe.steps if generalist else 0)
    if steps <= 0:
        raise SystemExit(f"{cycle} has no trained generalist; pass --steps")
    seed = generalist.recipe.seed if generalist else settings.train.seed
    scales = [float(s) for s in args.scales.split(",")]
    model_path = str(resolve_base_model(settings.model.base, settings.paths.models_dir))
    train_rows = load_split(journal.data.train_path)
    test_rows = list(load_split(journal.data.test_path))
    groups = problem_groups(test_rows)

    from evolora.tracking import setup_mlflow

    with tempfile.TemporaryDirectory() as root:
        store = settings.paths.model_copy(update={"mlruns_dir": Path(root) / "mlruns",
                                                  "tracking_uri": None})
        setup_mlflow(settings.model_copy(update={"paths": store}))
        candidates: dict[str, Path | None] = {champion.id: champion.adapter_dir}
        trained: dict[str, dict[str, float]] = {}
        for scale in scales:
            name = f"scale-{scale:g}"
            train = settings.train.model_copy(update={"continue_lr_scale": scale})
            result = train_adapter(settings.model_copy(update={"train": train}), model_path,
                                   train_rows, Path(root) / "adapters", name, seed=seed,
                                   max_steps=steps, init_adapter=champion.adapter_dir)
            candidates[name] = result.adapter_dir
            trained[name] = {
                "peak_learning_rate": peak_learning_rate(train, continuing=True),
                "train_loss": round(result.metrics.get("train_loss", float("nan")), 4)}
        results = evaluate_adapters(settings, model_path, test_rows, candidates)
    outcomes = {name: {str(r["id"]): bool(r["correct"]) for r in res.rows}
                for name, res in results.items()}
    report = {}
    for name, training in trained.items():
        paired = compare_by_group(outcomes[champion.id], outcomes[name], groups)
        decision = gate(results[name].metrics, results[champion.id].metrics, margin=0.0,
                        tolerance=settings.evolution.regression_tolerance, challenger=name,
                        champion=champion.id, paired=paired)
        report[name] = {
            **training,
            "accuracy": round(results[name].accuracy, 4),
            "easy": round(results[name].metrics["test_accuracy_easy"], 4),
            "hard": round(results[name].metrics["test_accuracy_hard"], 4),
            "vs_champion": paired["overall"].describe(),
            "promoted": decision.promote, "reasons": decision.reasons}
    print(json.dumps({"cycle": cycle.name, "champion": champion.id,
                      "champion_accuracy": round(results[champion.id].accuracy, 4),
                      "steps": steps, "seed": seed, "test_problems": len(test_rows),
                      "continuations": report}, indent=1))


if __name__ == "__main__":
    main()
