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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolora.models import resolve_base_model
from evolora.settings import Settings, load_settings

METRICS = ("test_accuracy", "test_accuracy_easy", "test_accuracy_hard")


def newest_cycle(settings: Settings) -> Path:
    cycles = sorted((settings.paths.data_dir / "cycles").glob("*/state.json"))
    if not cycles:
        raise SystemExit("no finished cycle under data/cycles; run `make demo` first")
    return cycles[-1].parent


def specialists_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    members = [v for k, v in state["steps"].items()
               if k.startswith("member/g0-") and v["recipe"].get("role") == "specialist"]
    if len(members) < 2:
        raise SystemExit("this cycle has fewer than 2 specialists; nothing to merge")
    return members


def build_merge(model_path: str, state: dict[str, Any], specialists: list[dict[str, Any]],
                method: str, density: float, out: Path) -> Path:
    from tasks.evolve.merge import crossover, merge_from_start
    from tasks.evolve.population import specialist_merge_recipe

    plan = specialist_merge_recipe(specialists, method, density=density)
    if method != "mean" and "start" not in plan:
        raise SystemExit(f"{method} needs specialists that continued one generalist")
    parents = [Path(m["adapter_dir"]) for m in specialists]
    if "start" in plan:
        start = Path(state["steps"][f"member/{plan['start']}"]["adapter_dir"])
        return merge_from_start(model_path, start, parents, out, method=method,
                                weights=plan["weights"], density=density)
    return crossover(model_path, parents, plan["weights"], "cat", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--cycle", type=Path, help="a cycle folder (default: the newest)")
    parser.add_argument("--methods", default="mean,ties,sum")
    parser.add_argument("--density", type=float, default=0.5, help="ties: fraction kept")
    args = parser.parse_args()

    from engines.transformers_runtime import ModelRuntime
    from evolora.tracking import setup_mlflow
    from tasks.data.examples import load_split
    from tasks.evaluate.scoring import evaluate_candidate

    settings = load_settings(args.config)
    cycle = args.cycle or newest_cycle(settings)
    state = json.loads((cycle / "state.json").read_text())
    specialists = specialists_of(state)
    model_path = str(resolve_base_model(settings.model.base, settings.paths.models_dir))
    rows = list(load_split(Path(state["steps"]["data"]["test_path"])))

    with tempfile.TemporaryDirectory() as root:
        store = settings.paths.model_copy(update={"mlruns_dir": Path(root) / "mlruns",
                                                  "tracking_uri": None})
        setup_mlflow(settings.model_copy(update={"paths": store}))
        runtime = ModelRuntime.load(model_path, settings.model.dtype)

        def score(name: str, adapter_dir: Path) -> dict[str, float]:
            runtime.attach(name, str(adapter_dir))
            result = evaluate_candidate(runtime, rows, candidate=name, adapter=name,
                                        max_new_tokens=settings.model.max_new_tokens)
            return {k.removeprefix("test_"): round(result.metrics[k], 4) for k in METRICS}

        parents = {m["id"]: score(m["id"], Path(m["adapter_dir"])) for m in specialists}
        merges = {}
        for method in args.methods.split(","):
            started = time.perf_counter()
            merged = build_merge(model_path, state, specialists, method, args.density,
                                 Path(root) / f"merge-{method}")
            merge_s = time.perf_counter() - started
            scores = score(f"merge-{method}", merged)
            merges[method] = {**scores, "merge_s": round(merge_s, 1), "beats_each_parent": all(
                scores["accuracy"] > p["accuracy"] for p in parents.values())}
    print(json.dumps({"cycle": cycle.name, "test_problems": len(rows),
                      "density": args.density, "parents": parents, "merges": merges},
                     indent=1))


if __name__ == "__main__":
    main()
