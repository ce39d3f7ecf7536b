"""The self-improvement cycle, as one Prefect flow.

    data -> train the initial population -> evaluate
         -> G x (plan [AutoGen agents, GA fallback] -> breed -> evaluate -> select)
         -> promotion gate (MLflow registry alias `champion`)

Fitness is accuracy on the eval split; the frozen test set is used for the numbers a
person reads (base, best initial, each generation's best, champion) and for the gate. Every
step is recorded in the cycle's state file as it finishes, so a killed cycle resumes.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task

from evolora.logs import get_logger
from evolora.settings import Settings, load_settings
from evolora.tracking import CANDIDATE_TAG, log_resolved_config, setup_mlflow
from flows.cycle_journal import CycleState
from flows.train_adapter import generate_data, prepare_base_model

log = get_logger(__name__)


def _genealogy_tags(member: dict[str, Any], data: dict[str, Any], base_sha: str
                    ) -> dict[str, str]:
    """The tags every candidate's runs carry: where it came from and on what data."""
    recipe = member.get("recipe", {})
    # A merge of changes from a start member descends from that member too.
    start = {"evolora.merge_start": recipe["start"]} if recipe.get("start") else {}
    return {
        **start,
        "evolora.member": member["id"],
        "evolora.generation": str(member["generation"]),
        "evolora.parents": json.dumps(member.get("parents", [])),
        "evolora.combination_type": str(recipe.get("combination_type", "")),
        "evolora.weights": json.dumps(recipe.get("weights", [])),
        "evolora.mutation": json.dumps(recipe.get("mutation", {})),
        "evolora.data_hashes": json.dumps(data["hashes"]),
        "evolora.base_model_sha256": base_sha,
    }


@task(name="train-member", retries=1, retry_delay_seconds=5)
def train_member(settings: Settings, model_path: str, data: dict[str, Any], spec: dict[str, Any],
                 adapters_dir: str, parent_run_id: str, tags: dict[str, str],
                 init_adapter: str | None = None) -> dict[str, Any]:
    """Train one initial member on its data mix (continuing `init_adapter` if given)."""
    from tasks.data.examples import load_split
    from tasks.evolve.population import rows_for_skills
    from tasks.train.trainer import train_adapter

    rows = rows_for_skills(load_split(Path(data["train_path"])), spec["skills"])
    train = settings.train.model_copy(update={"rank": spec["rank"],
                                              "alpha": 2 * spec["rank"]})
    member_settings = settings.model_copy(update={"train": train})
    recipe = {"kind": "initial", "role": spec["role"], "skills": spec["skills"],
              "seed": spec["seed"], "steps": spec["steps"], "init_from": spec["init_from"]}
    result = train_adapter(member_settings, model_path, rows, Path(adapters_dir), spec["id"],
                           seed=spec["seed"], max_steps=spec["steps"],
                           tags=tags, dataset_hashes=data["hashes"],
                           parent_run_id=parent_run_id,
                           init_adapter=Path(init_adapter) if init_adapter else None,
                           manifest_extra={"recipe": recipe, "parents": [], "generation": 0})
    return {"id": spec["id"], "adapter_dir": str(result.adapter_dir), "rank": spec["rank"],
            "generation": 0, "parents": [], "recipe": recipe, "train_run_id": result.run_id}


@task(name="harvest-traces", retries=1, retry_delay_seconds=2)
def harvest_traces(settings: Settings, data: dict[str, Any], since: float | None,
                   parent_run_id: str) -> dict[str, Any]:
    """Mix verified serving traces since the last cycle into the training split."""
    from tasks.harvest.pipeline import harvest_into_training

    return harvest_into_training(settings, data, since=since, parent_run_id=parent_run_id)


@task(name="breed-child", retries=1, retry_delay_seconds=5)
def breed_child(settings: Settings, model_path: str, data: dict[str, Any],
                child_plan: dict[str, Any], parents: list[dict[str, Any]], child_id: str,
                generation: int, adapters_dir: str, parent_run_id: str,
                start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cross the parents as planned, then apply the planned mutation; returns the record.

    A plan with a `start` (the member the parents continued) merges the parents' changes
    from it (`merge_from_start`); any other plan goes through PEFT's weighted merges.
    """
    import shutil

    from tasks.data.examples import load_split
    from tasks.evolve.merge import (
        adapter_rank,
        crossover,
        merge_from_start,
        mutate_finetune,
        mutate_noise,
        mutate_rank,
    )

    out = Path(adapters_dir) / child_id
    mutation = child_plan.get("mutation") or {"kind": "none"}
    kind = mutation["kind"]
    recipe = {"kind": "child", "combination_type": child_plan["combination_type"],
              "weights": child_plan["weights"], "density": child_plan.get("density", 0.5),
              "mutation": mutation}
    if start is not None:
        recipe["start"] = start["id"]
    # The merge functions write their own `recipe`; the cycle's view goes beside it.
    lineage = {"lineage": {"member": child_id, "generation": generation,
                           "parents": [p["id"] for p in parents], "plan": recipe}}
    parent_dirs = [Path(p["adapter_dir"]) for p in parents]
    crossed = parent_dirs[0]
    if len(parent_dirs) > 1:
        target = out if kind == "none" else out.with_name(f"{out.name}-crossed")
        weights = [float(w) for w in child_plan["weights"]]
        density = float(child_plan.get("density", 0.5))
        if start is not None:
            method = child_plan["combination_type"].removesuffix("_from_start")
            crossed = merge_from_start(model_path, Path(start["adapter_dir"]), parent_dirs,
                                       target, method=method, weights=weights,
                                       density=density, manifest_extra=lineage)
        else:
            crossed = crossover(model_path, parent_dirs, weights,
                                child_plan["combination_type"], target, density=density,
                                manifest_extra=lineage)
    seed = settings.train.seed + 100 * generation + len(child_id)
    if kind == "noise":
        strength = float(mutation.get("strength") or settings.evolution.mutation_std)
        mutate_noise(crossed, out, strength=strength, seed=seed, manifest_extra=lineage)
    elif kind == "rank":
        new_rank = int(mutation.get("rank") or settings.train.rank)
        mutate_rank(model_path, crossed, out, new_rank=new_rank, seed=seed,
                    manifest_extra=lineage)
    elif kind == "finetune":
        rows = load_split(Path(data["train_path"])).shuffle(seed=seed)
        steps = max(2, int(mutation.get("steps") or settings.evolution.finetune_steps))
        mutate_finetune(settings, model_path, crossed, out, rows, steps=steps, seed=seed,
                        parent_run_id=parent_run_id, manifest_extra=lineage)
    elif crossed != out:  # one parent, no mutation: the child is a copy
        shutil.copytree(crossed, out, dirs_exist_ok=True)
    if crossed not in (out, *parent_dirs):
        shutil.rmtree(crossed, ignore_errors=True)
    config = json.loads((out / "adapter_config.json").read_text())
    return {"id": child_id, "adapter_dir": str(out), "rank": adapter_rank(config),
            "generation": generation, "parents": [p["id"] for p in parents],
            "recipe": recipe}


@task(name="evaluate-member")
def evaluate_member(settings: Settings, model_path: str, data: dict[str, Any],
                    member: dict[str, Any] | None, split: str, parent_run_id: str,
                    tags: dict[str, str]) -> dict[str, float]:
    """A member's (or the base model's, for None) metrics on `split`."""
    from engines.transformers_runtime import ModelRuntime
    from tasks.data.examples import load_split
    from tasks.evaluate.scoring import evaluate_candidate

    rows = list(load_split(Path(data[f"{split}_path"])))
    runtime = ModelRuntime.load(model_path, settings.model.dtype)
    name = "base"
    if member is not None:
        name = member["id"]
        runtime.attach(name, member["adapter_dir"])
    result = evaluate_candidate(runtime, rows, candidate=name, adapter=name, split=split,
                                tags=tags, parent_run_id=parent_run_id,
                                max_new_tokens=settings.model.max_new_tokens)
    return result.metrics


@flow(name="evolora-cycle")
def cycle_flow(config: str = "demo", new: bool = False) -> dict[str, Any]:
    """One self-improvement cycle; resumes the latest unfinished one unless `new`."""
    from evolora.models import base_model_checksum
    from tasks.evolve.population import seed_population

    settings = load_settings(config)
    client = setup_mlflow(settings)
    state = CycleState.open(settings.paths.data_dir / "cycles", new=new)
    started, resumed = time.perf_counter(), state.resumed
    if resumed:
        log.info("cycle.resume", cycle=state.cycle_id, done=sorted(state.steps))
    with mlflow.start_run(run_id=state.parent_run_id,
                          run_name=None if state.parent_run_id else f"cycle-{state.cycle_id}",
                          tags={"evolora.step": "cycle", "evolora.cycle": state.cycle_id}
                          ) as parent:
        if state.parent_run_id is None:
            state.parent_run_id = parent.info.run_id
            state.save()
            log_resolved_config(settings, {"cycle_id": state.cycle_id})
        model_path = prepare_base_model(settings)
        if state.done("data") is None:
            since = CycleState.last_harvest_watermark(state.folder.parent)
            synthetic = generate_data(settings, parent_run_id=parent.info.run_id)
            state.record("data", harvest_traces(settings, synthetic, since,
                                                parent.info.run_id))
        data = state.steps["data"]
        cycle = Cycle(settings, state, model_path, data, base_model_checksum(model_path))

        base_test = cycle.scored(None, "test")
        population = [cycle.initial_member(spec) for spec in seed_population(settings)]
        best_initial = max(population, key=lambda m: m["fitness"])
        generations = []
        with cycle.breeding_agents() as llm_config:
            for generation in range(1, settings.evolution.generations + 1):
                population, record = cycle.generation(generation, population, llm_config)
                generations.append(record)
        challenger, challenger_reason = pick_challenger(
            population, best_initial, lambda m: cycle.scored(m, "test")["test_accuracy"])
        promotion = state.done("promotion") or state.record(
            "promotion", _promote(client, settings, challenger, cycle.scored(challenger, "test"),
                                  data, cycle.base_sha, parent.info.run_id))

        summary = {
            "cycle_id": state.cycle_id,
            **cycle.headline("base", None, base_test),
            **cycle.headline("best_initial", best_initial),
            "generations": generations,
            **cycle.headline("challenger", challenger),
            "challenger_reason": challenger_reason,
            **cycle.champion_headline(client, promotion),
            "specialist_merge": cycle.specialist_merge_report(),
            "resumed": resumed,
            # All runs of this cycle (a resumed one included); this run's alone beside it.
            "wall_s": round(state.work_s, 1),
            "wall_s_this_run": round(time.perf_counter() - started, 1),
        }
        # What cross-over and mutation did this cycle: its best (the challenger) against the
        # best initial member. The champion may be an older cycle's, if the gate refused.
        summary["evolution_gain"] = summary["challenger"] - summary["best_initial"]
        summary["evolution_gain_hard"] = (summary["challenger_hard"]
                                          - summary["best_initial_hard"])
        mlflow.log_metrics({f"summary_{k}": float(v) for k, v in summary.items()
                            if isinstance(v, float)})
        mlflow.log_dict(summary, "cycle-summary.json")
    state.status = "done"
    state.record("summary", summary)
    return summary


class Cycle:
    """One cycle's steps, each looked up in the state record before it runs."""

    def __init__(self, settings: Settings, state: CycleState, model_path: str,
                 data: dict[str, Any], base_sha: str) -> None:
        self.settings, self.state, self.model_path = settings, state, model_path
        self.data, self.base_sha = data, base_sha
        self.adapters_dir = str(state.folder / "adapters")
        self.parent_id = str(state.parent_run_id)

    def tags(self, member: dict[str, Any] | None) -> dict[str, str]:
        tags = ({CANDIDATE_TAG: "base"} if member is None
                else _genealogy_tags(member, self.data, self.base_sha))
        return {**tags, "evolora.cycle": self.state.cycle_id}

    def scored(self, member: dict[str, Any] | None, split: str) -> dict[str, float]:
        """A member's (None: the base model's) metrics on a split, evaluated once."""
        key = f"eval/{member['id'] if member else 'base'}/{split}"
        if self.state.done(key) is None:
            self.state.record(key, evaluate_member(self.settings, self.model_path, self.data,
                                                   member, split, self.parent_id,
                                                   self.tags(member)))
        return self.state.steps[key]

    def with_fitness(self, key: str) -> dict[str, Any]:
        member = dict(self.state.steps[key])
        member["fitness"] = self.scored(member, "eval")["eval_accuracy"]
        return member

    def initial_member(self, spec: Any) -> dict[str, Any]:
        """Train (once) and score an initial member."""
        key = f"member/{spec.id}"
        if self.state.done(key) is None:
            record = {"id": spec.id, "generation": 0, "parents": [],
                      "recipe": {"kind": "initial", "skills": spec.skills,
                                 "init_from": spec.init_from}}
            init_adapter = (self.state.steps[f"member/{spec.init_from}"]["adapter_dir"]
                            if spec.init_from else None)
            self.state.record(key, train_member(
                self.settings, self.model_path, self.data, spec.to_dict(), self.adapters_dir,
                self.parent_id, self.tags(record), init_adapter))
        return self.with_fitness(key)

    @contextmanager
    def breeding_agents(self) -> Iterator[dict[str, Any] | None]:
        """The AutoGen agents' LLM config, starting the embedded server only if needed."""
        from engines.llama_server import EmbeddedLlamaServer, default_gguf_path
        from tasks.evolve.agents import llm_config_for

        evo = self.settings.evolution
        if not evo.use_agents or evo.generations == 0:
            yield None
            return
        if evo.llm_base_url:
            yield llm_config_for(evo, evo.llm_base_url)
            return
        with EmbeddedLlamaServer(default_gguf_path(), n_threads=2) as server:
            yield llm_config_for(evo, server.base_url)

    def plan(self, generation: int, population: list[dict[str, Any]],
             llm_config: dict[str, Any] | None) -> dict[str, Any]:
        """The generation's breeding plan (agents, or the GA fallback), decided once."""
        from tasks.evolve.agents import decide_plan
        from tasks.evolve.population import specialist_merge_recipe

        key = f"plan/{generation}"
        if self.state.done(key) is None:
            plan, record = decide_plan(
                [_as_member(m) for m in population], self.settings.evolution,
                n_children=self.settings.evolution.children_per_generation,
                rng=random.Random(self.settings.train.seed + generation), llm_config=llm_config)
            children = plan.model_dump()["children"]
            specialists = [m for m in population if m["recipe"].get("role") == "specialist"]
            if generation == 1 and len(specialists) >= 2:
                # Always try composing the specialists (as LoraHub composes task adapters).
                evo = self.settings.evolution
                merge = specialist_merge_recipe(specialists, evo.specialist_merge,
                                                evo.specialist_merge_weight,
                                                evo.specialist_merge_density)
                rule = merge.pop("rule")
                children.append({**merge, "mutation": {"kind": "none", "strength": 0.0},
                                 "specialist_merge": True, "merge_rule": rule})
            self.state.record(key, {"children": children, "record": record})
        return self.state.steps[key]

    def generation(self, generation: int, population: list[dict[str, Any]],
                   llm_config: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict]:
        """Plan, breed, evaluate, select; returns the survivors and the generation's record."""
        from tasks.evolve.agents import select_survivors
        from tasks.evolve.merge import population_diversity

        planned = self.plan(generation, population, llm_config)
        by_id = {m["id"]: m for m in population}
        children = []
        for index, child_plan in enumerate(planned["children"]):
            child_id = f"g{generation}-c{index}"
            key = f"member/{child_id}"
            if self.state.done(key) is None:
                parents = [by_id[p] for p in child_plan["parents"]]
                start = child_plan.get("start")
                record = breed_child(self.settings, self.model_path, self.data, child_plan,
                                     parents, child_id, generation, self.adapters_dir,
                                     self.parent_id,
                                     self.state.steps[f"member/{start}"] if start else None)
                record["specialist_merge"] = bool(child_plan.get("specialist_merge"))
                if record["specialist_merge"]:
                    record["merge_rule"] = child_plan.get("merge_rule", "mean")
                self.state.record(key, record)
            children.append(self.with_fitness(key))
        pool = population + children
        survivors = select_survivors([_as_member(m) for m in pool],
                                     population_size=self.settings.evolution.population_size,
                                     elite=self.settings.evolution.elite)
        kept = {m.id for m in survivors}
        next_population = [m for m in pool if m["id"] in kept]
        best = max(next_population, key=lambda m: m["fitness"])
        best_test = self.scored(best, "test")
        return next_population, {
            "generation": generation,
            "policy": planned["record"]["policy"],
            "policy_reason": planned["record"].get("reason", ""),
            "children": [c["id"] for c in children],
            "survivors": sorted(kept),
            "best_id": best["id"],
            "best_fitness": best["fitness"],
            "best": best_test["test_accuracy"],
            "best_hard": best_test.get("test_accuracy_hard", 0.0),
            "diversity": population_diversity([Path(m["adapter_dir"])
                                               for m in next_population]),
        }

    def headline(self, prefix: str, member: dict[str, Any] | None,
                 metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """`<prefix>`, `<prefix>_hard` (test accuracy) and `<prefix>_id` for the summary."""
        metrics = metrics or self.scored(member, "test")
        return {prefix: metrics["test_accuracy"],
                f"{prefix}_hard": metrics.get("test_accuracy_hard", 0.0),
                f"{prefix}_id": member["id"] if member else "base"}

    def champion_headline(self, client: Any, promotion: dict[str, Any]) -> dict[str, Any]:
        """The registry's champion after the gate, with its test accuracy."""
        from tasks.registry.versions import get_alias, version_metrics

        evo = self.settings.evolution
        champion = get_alias(client, evo.registry_model_name, "champion")
        metrics = version_metrics(champion) if champion else {}
        return {"champion": metrics.get("test_accuracy", 0.0),
                "champion_hard": metrics.get("test_accuracy_hard", 0.0),
                "champion_version": champion.version if champion else None,
                "promoted": bool(promotion["promoted"]),
                "registry_version": promotion["version"],
                "gate_reasons": promotion["reasons"]}

    def specialist_merge_report(self) -> dict[str, Any] | None:
        """Test accuracy of the specialists' merge against each of its parents."""
        merged = [v for k, v in self.state.steps.items()
                  if k.startswith("member/") and v.get("specialist_merge")]
        if not merged:
            return None
        child = merged[0]
        parents = {p: self.scored(self.state.steps[f"member/{p}"], "test")["test_accuracy"]
                   for p in child["parents"]}
        accuracy = self.scored(child, "test")["test_accuracy"]
        plan = child["recipe"]
        return {"id": child["id"], "accuracy": accuracy, "parents": parents,
                "rule": child.get("merge_rule", "mean"), "weights": plan["weights"],
                "beats_each_parent": all(accuracy > a for a in parents.values())}


def _as_member(record: dict[str, Any]) -> Any:
    from tasks.evolve.agents import Member

    return Member(id=record["id"], adapter_dir=record["adapter_dir"],
                  fitness=record.get("fitness", 0.0), metrics=record.get("metrics", {}),
                  rank=record["rank"], generation=record["generation"],
                  parents=record.get("parents", []), recipe=record.get("recipe", {}))


def pick_challenger(population: list[dict[str, Any]], best_initial: dict[str, Any],
                    test_accuracy: Callable[[dict[str, Any]], float]
                    ) -> tuple[dict[str, Any], str]:
    """The member the gate weighs against the champion, and why it is that one.

    The final population's fittest (eval split), unless it scores below the best initial
    member on the frozen test set: fitness is 30 problems, and a cycle should not offer
    less than it started with. The test set already decides promotion; this makes the
    best initial member one more incumbent the challenger has to match.
    """
    fittest = max(population, key=lambda m: m["fitness"])
    if fittest["id"] == best_initial["id"]:
        return fittest, f"{fittest['id']}: the fittest on the eval split"
    fittest_test, initial_test = test_accuracy(fittest), test_accuracy(best_initial)
    if fittest_test < initial_test:
        return best_initial, (f"{best_initial['id']}: the fittest, {fittest['id']}, scored "
                              f"{fittest_test:.3f} on the test set, below the best initial "
                              f"member's {initial_test:.3f}")
    return fittest, f"{fittest['id']}: the fittest on the eval split"


def _promote(client: Any, settings: Settings, challenger: dict[str, Any],
             test_metrics: dict[str, float], data: dict[str, Any], base_sha: str,
             parent_run_id: str) -> dict[str, Any]:
    """Register the cycle's best and let the gate decide whether it becomes champion."""
    from tasks.registry.versions import Candidate, get_alias, promote_if_better, register_candidate
    from tasks.train.trainer import read_adapter_manifest

    evo = settings.evolution
    adapter_dir = Path(challenger["adapter_dir"])
    manifest = read_adapter_manifest(adapter_dir)
    run_id = challenger.get("train_run_id") or manifest.get("mlflow_run_id") or parent_run_id
    genealogy = {
        "member": challenger["id"], "parents": challenger.get("parents", []),
        "recipe": challenger.get("recipe", {}), "generation": challenger["generation"],
        "data_hashes": data["hashes"], "base_model_sha256": base_sha,
        "cycle_parent_run_id": parent_run_id,
    }
    version = register_candidate(client, Candidate(challenger["id"], adapter_dir, run_id,
                                                   test_metrics, genealogy),
                                 evo.registry_model_name)
    previous = get_alias(client, evo.registry_model_name, "champion")
    decision = promote_if_better(client, evo.registry_model_name, version.version,
                                 margin=evo.promotion_margin,
                                 tolerance=evo.regression_tolerance,
                                 verify_dir=adapter_dir)
    return {"version": version.version, "promoted": decision.promote,
            "reasons": decision.reasons,
            "previous_champion": previous.version if previous else None}
