"""Specialist merges compared with their parents, on a finished cycle's frozen test set.

    .venv/bin/python bench/merge.py --config demo --methods mean,ties,sum
    .venv/bin/python bench/merge.py --cycle data/cycles/20261127-063509 --density 0.3

Prints ONE JSON object. The cycle's specialists (the parents) and each merge of them are
evaluated in this run, on the same model, test set and greedy decoding, so `beats_each_parent`
compares like with like. The merges are the ones `evolution.specialist_merge` offers:
`mean` (cat, 1/n each), `ties` and `sum` (the changes since the generalist the specialists
continued, `tasks.evolve.merge.merge_from_start`). Its MLflow runs go to a throwaway store.
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
from flows.cycle_journal import STATE_FILE, CycleJournal
from tasks.records import Member

METRICS = ("test_accuracy", "test_accuracy_easy", "test_accuracy_hard")


def newest_cycle(settings: Settings) -> Path:
    cycles = sorted((settings.paths.data_dir / "cycles").glob(f"*/{STATE_FILE}"))
    if not cycles:
        raise SystemExit("no finished cycle under data/cycles; run `make demo` first")
    return cycles[-1].parent


def specialists_of(journal: CycleJournal) -> list[Member]:
    members = [m for m in journal.members.values() if m.role == "specialist"]
    if len(members) < 2:
        raise SystemExit("this cycle has fewer than 2 specialists; nothing to merge")
    return members


def build_merge(model_path: str, journal: CycleJournal, specialists: list[Member],
                method: str, density: float, out: Path) -> Path:
    from tasks.evolve import crossover, merge_from_start, specialist_merge_recipe

    plan = specialist_merge_recipe(specialists, method, density=density)
    if method != "mean" and plan.start is None:
        raise SystemExit(f"{method} needs specialists that continued one generalist")
    parents = [m.adapter_dir for m in specialists]
    if plan.start is not None:
        return merge_from_start(model_path, journal.members[plan.start].adapter_dir, parents,
                                out, method=method, weights=plan.weights, density=density)
    return crossover(model_path, parents, plan.weights, "cat", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--cycle", type=Path, help="a cycle folder (default: the newest)")
    parser.add_argument("--methods", default="mean,ties,sum")
    parser.add_argument("--density", type=float, default=0.5, help="ties: fraction kept")
    args = parser.parse_args()
    configure_logging()  # our events to stderr: stdout is the one JSON object

    from evolora.tracking import setup_mlflow
    from tasks.data import load_split
    from tasks.evaluate import evaluate_adapters

    settings = load_settings(args.config)
    cycle = args.cycle or newest_cycle(settings)
    journal = CycleJournal.load(cycle)
    if journal is None or journal.data is None:
        raise SystemExit(f"{cycle} was written by an older evolora or has no data yet")
    specialists = specialists_of(journal)
    model_path = str(resolve_base_model(settings.model.base, settings.paths.models_dir))
    rows = list(load_split(journal.data.test_path))

    with tempfile.TemporaryDirectory() as root:
        store = settings.paths.model_copy(update={"mlruns_dir": Path(root) / "mlruns",
                                                  "tracking_uri": None})
        setup_mlflow(settings.model_copy(update={"paths": store}))
        built: dict[str, Path | None] = {m.id: m.adapter_dir for m in specialists}
        merge_s = {}
        for method in args.methods.split(","):
            started = time.perf_counter()
            built[f"merge-{method}"] = build_merge(model_path, journal, specialists, method,
                                                   args.density, Path(root) / f"merge-{method}")
            merge_s[method] = round(time.perf_counter() - started, 1)
        results = evaluate_adapters(settings, model_path, rows, built)
        scores = {name: {k.removeprefix("test_"): round(r.metrics[k], 4) for k in METRICS}
                  for name, r in results.items()}
        parents = {m.id: scores[m.id] for m in specialists}
        merges = {method: {**scores[f"merge-{method}"], "merge_s": seconds,
                           "beats_each_parent": all(
                               scores[f"merge-{method}"]["accuracy"] > p["accuracy"]
                               for p in parents.values())}
                  for method, seconds in merge_s.items()}
    print(json.dumps({"cycle": cycle.name, "test_problems": len(rows),
                      "density": args.density, "parents": parents, "merges": merges},
                     indent=1))


if __name__ == "__main__":
    main()
