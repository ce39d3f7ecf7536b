"""The cycle's Prefect tasks: typed records in, typed records out.

Each task is one step of `flows/cycle.py::cycle_flow` and takes the settings section it
needs plus the `CycleContext` every step shares (base model, data splits, MLflow parent
run, where adapters go). Whether a step already ran is the flow's business (its journal),
not the task's: a task always does its work.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task

from evolora.logs import get_logger
from evolora.models import cpu_threads, embedded_gguf_path
from evolora.settings import EvolutionSettings, Settings
from evolora.vocabulary import CANDIDATE_TAG, CHAMPION, MUTATION_TAG
from tasks.records import (
    DataSplits,
    GenerationPlan,
    InitialRecipe,
    Member,
    PlannedChild,
    Promotion,
    Record,
    ScoredSplit,
    Scores,
)
from tasks.train.trunk import WsdSchedule

log = get_logger(__name__)


class CycleContext(Record):
    """What every step of one cycle shares."""

    cycle_id: str
    model_path: str
    base_sha: str
    data: DataSplits
    parent_run_id: str
    adapters_dir: Path


def candidate_tags(ctx: CycleContext, member: Member | None) -> dict[str, str]:
    """The MLflow tags a candidate's runs carry: where it came from and on what data."""
    if member is None:
        return {CANDIDATE_TAG: "base", "evolora.cycle": ctx.cycle_id}
    recipe = member.recipe.to_json()
    # A merge of changes from a start member descends from that member too.
    start = {"evolora.merge_start": str(recipe["start"])} if recipe.get("start") else {}
    return {
        **start,
        "evolora.member": member.id,
        "evolora.generation": str(member.generation),
        "evolora.parents": json.dumps(member.parents),
        "evolora.combination_type": str(recipe.get("combination_type", "")),
        "evolora.weights": json.dumps(recipe.get("weights", [])),
        MUTATION_TAG: json.dumps(recipe.get("mutation", {})),
        "evolora.data_hashes": json.dumps(ctx.data.hashes),
        "evolora.base_model_sha256": ctx.base_sha,
        "evolora.cycle": ctx.cycle_id,
    }


@task(name="harvest-serving-traces", retries=1, retry_delay_seconds=2)
def mix_in_serving_traces(settings: Settings, data: DataSplits, since: float | None,
                          parent_run_id: str) -> DataSplits:
    """The splits with verified serving traces since `since` mixed into training."""
    from tasks.harvest import harvest_into_training

    return harvest_into_training(settings, data, since=since, parent_run_id=parent_run_id)


@task(name="warm-start")
def warm_start_member(settings: Settings, base_sha: str, adapters_dir: Path) -> Member | None:
    """The registry's champion, downloaded and verified, as the start of this cycle's
    generalist; None (a cold start from the base) without a champion, with warm starts
    off, or when the champion was trained on another base model."""
    from tasks.evolve import adapter_rank
    from tasks.registry import download_version, get_alias
    from tasks.registry.versions import version_genealogy

    evo = settings.evolution
    if not evo.warm_start:
        return None
    client = MlflowClient()
    champion = get_alias(client, evo.registry_model_name, CHAMPION)
    if champion is None:
        return None
    trained_on = version_genealogy(champion).get("base_model_sha256")
    if trained_on not in (None, base_sha):
        log.warning("cycle.warm_start.skipped", version=str(champion.version),
                    reason="the champion was trained on another base model")
        return None
    member_id = f"champion-v{champion.version}"
    dest = adapters_dir / member_id
    if not dest.is_dir():
        download_version(client, evo.registry_model_name, str(champion.version), dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    log.info("cycle.warm_start", version=str(champion.version), path=str(dest))
    # Inherited, not trained here: a generalist recipe of 0 steps over every skill.
    recipe = InitialRecipe(role="generalist", skills=list(settings.data.skills),
                           seed=settings.train.seed, steps=0)
    return Member(id=member_id, adapter_dir=dest, rank=adapter_rank(config), generation=0,
                  recipe=recipe)


@task(name="train-member", retries=1, retry_delay_seconds=5)
def train_member(settings: Settings, ctx: CycleContext, member_id: str, recipe: InitialRecipe,
                 start: Member | None, wsd: WsdSchedule | None = None) -> Member:
    """Train one initial member on its skills' rows (continuing `start`'s adapter if given;
    with `wsd`, as tonight's part of the trunk's schedule, tasks/train/trunk.py)."""
    from tasks.data import load_split
    from tasks.evolve import rows_for_skills
    from tasks.train import train_adapter

    member = Member(id=member_id, adapter_dir=ctx.adapters_dir / member_id,
                    rank=settings.train.rank, generation=0, recipe=recipe)
    rows = rows_for_skills(load_split(ctx.data.train_path), recipe.skills)
    result = train_adapter(settings, ctx.model_path, rows, ctx.adapters_dir, member_id,
                           seed=recipe.seed, max_steps=recipe.steps,
                           tags=candidate_tags(ctx, member), dataset_hashes=ctx.data.hashes,
                           parent_run_id=ctx.parent_run_id,
                           init_adapter=start.adapter_dir if start else None,
                           manifest_extra={"recipe": recipe.to_json(), "parents": [],
                                           "generation": 0}, wsd=wsd)
    return member.model_copy(update={"adapter_dir": result.adapter_dir,
                                     "train_run_id": result.run_id})


@task(name="breed-child", retries=1, retry_delay_seconds=5)
def breed_child(settings: Settings, ctx: CycleContext, child_id: str, generation: int,
                plan: PlannedChild, parents: list[Member], start: Member | None) -> Member:
    """Cross the parents as planned, then apply the planned mutation.

    A plan with a `start` (the member the parents continued) merges the parents' changes
    from it (`merge_from_start`); any other plan goes through PEFT's weighted merges.
    """
    from tasks.data import load_split
    from tasks.evolve import (
        adapter_rank,
        crossover,
        merge_from_start,
        mutate_finetune,
        mutate_noise,
        mutate_rank,
    )

    out = ctx.adapters_dir / child_id
    recipe = plan.recipe()
    mutation = plan.mutation
    # The merge functions write their own `recipe`; the cycle's view goes beside it.
    lineage = {"lineage": {"member": child_id, "generation": generation,
                           "parents": [p.id for p in parents], "plan": recipe.to_json()}}
    parent_dirs = [p.adapter_dir for p in parents]
    crossed = parent_dirs[0]
    if len(parent_dirs) > 1:
        target = out if mutation.kind == "none" else out.with_name(f"{out.name}-crossed")
        if start is not None:
            method = plan.combination_type.removesuffix("_from_start")
            crossed = merge_from_start(ctx.model_path, start.adapter_dir, parent_dirs, target,
                                       method=method, weights=plan.weights,
                                       density=plan.density, manifest_extra=lineage)
        else:
            crossed = crossover(ctx.model_path, parent_dirs, plan.weights,
                                plan.combination_type, target, density=plan.density,
                                manifest_extra=lineage)
    seed = settings.train.seed + 100 * generation + len(child_id)
    if mutation.kind == "noise":
        mutate_noise(crossed, out, strength=mutation.strength or settings.evolution.mutation_std,
                     seed=seed, manifest_extra=lineage)
    elif mutation.kind == "rank":
        mutate_rank(ctx.model_path, crossed, out, new_rank=mutation.rank or settings.train.rank,
                    seed=seed, manifest_extra=lineage)
    elif mutation.kind == "finetune":
        rows = load_split(ctx.data.train_path).shuffle(seed=seed)
        steps = max(2, mutation.steps or settings.evolution.finetune_steps)
        mutate_finetune(settings, ctx.model_path, crossed, out, rows, steps=steps, seed=seed,
                        parent_run_id=ctx.parent_run_id, manifest_extra=lineage)
    elif crossed != out:  # one parent, no mutation: the child is a copy
        shutil.copytree(crossed, out, dirs_exist_ok=True)
    if crossed not in (out, *parent_dirs):
        shutil.rmtree(crossed, ignore_errors=True)
    config = json.loads((out / "adapter_config.json").read_text())
    return Member(id=child_id, adapter_dir=out, rank=adapter_rank(config),
                  generation=generation, parents=[p.id for p in parents], recipe=recipe,
                  merge_rule=plan.merge_rule)


@task(name="evaluate-member")
def evaluate_member(settings: Settings, ctx: CycleContext, member: Member | None,
                    split: ScoredSplit) -> Scores:
    """A member's (or the base model's, for None) scores on `split`, with each problem's
    outcome. The base model's are computed once per base, test set and engine: every night
    would score it the same."""
    from tasks.data import load_split
    from tasks.evaluate import evaluate_adapters

    cache = _base_cache(settings, ctx, split) if member is None else None
    if cache is not None and cache.is_file():
        return Scores.model_validate_json(cache.read_text())
    name = member.id if member else "base"
    results = evaluate_adapters(settings, ctx.model_path, list(load_split(ctx.data.path(split))),
                                {name: member.adapter_dir if member else None}, split=split,
                                tags=candidate_tags(ctx, member),
                                parent_run_id=ctx.parent_run_id)
    result = results[name]
    scores = Scores(split=split, metrics=result.metrics, run_id=result.run_id,
                    outcomes={str(row["id"]): bool(row["correct"]) for row in result.rows},
                    split_hash=ctx.data.hashes.get(split))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(scores.model_dump_json())
    return scores


def _base_cache(settings: Settings, ctx: CycleContext, split: ScoredSplit) -> Path | None:
    split_hash = ctx.data.hashes.get(split)
    if split == "eval" or not split_hash:
        return None  # the eval split is drawn anew with the training problems
    key = (f"{settings.serving.engine}-{ctx.base_sha[:12]}-{split_hash[:12]}-"
           f"{settings.model.max_new_tokens}")
    return settings.paths.data_dir / "cache" / "base-scores" / f"{key}.json"


@task(name="rescore-champion")
def rescore_champion(settings: Settings, ctx: CycleContext, champion: Member) -> Scores | None:
    """The registry champion's scores on this cycle's test set, when the registry holds no
    outcomes of it on this test set (the frozen test set changed since it was promoted):
    scored once, recorded on the version, so the gate pairs the challenger against it on
    the same problems. None when the recorded ones already fit."""
    from tasks.registry import get_alias
    from tasks.registry.versions import record_test_scores, version_outcomes

    client = MlflowClient()
    name = settings.evolution.registry_model_name
    version = get_alias(client, name, CHAMPION)
    if version is None or f"champion-v{version.version}" != champion.id:
        return None
    recorded = version_outcomes(version)
    if recorded is not None and recorded[0] == ctx.data.hashes["test"]:
        return None
    scores = evaluate_member.fn(settings, ctx, champion, "test")
    record_test_scores(client, name, str(version.version), scores.metrics, scores.outcomes,
                       ctx.data.hashes["test"])
    log.info("cycle.champion_rescored", version=str(version.version),
             accuracy=round(scores.accuracy, 3))
    return scores


@task(name="plan-generation")
def plan_generation(evo: EvolutionSettings, seed: int, generation: int,
                    population: list[Member], llm_base_url: str | None) -> GenerationPlan:
    """The generation's children: the agents' plan (or the GA's), and in generation 1 the
    specialists' composition (as LoraHub composes task adapters)."""
    from tasks.evolve import decide_plan, llm_config_for, specialist_merge_recipe

    llm_config = llm_config_for(evo, llm_base_url) if llm_base_url else None
    plan, decision = decide_plan(population, evo, n_children=evo.children_per_generation,
                                 rng=random.Random(seed + generation), llm_config=llm_config)
    children = [PlannedChild(**child.model_dump()) for child in plan.children]
    specialists = [m for m in population if m.role == "specialist"]
    if generation == 1 and len(specialists) >= 2:
        children.append(specialist_merge_recipe(
            specialists, evo.specialist_merge, evo.specialist_merge_weight,
            evo.specialist_merge_density))
    return GenerationPlan(generation=generation, children=children, decision=decision,
                          rationale=plan.rationale)


@task(name="promote-challenger")
def promote_challenger(settings: Settings, ctx: CycleContext,
                       challenger: Member) -> Promotion:
    """Register the cycle's challenger and let the gate decide whether it becomes champion."""
    from engines.engine import base_gguf_path
    from tasks.registry import Candidate, get_alias, promote_if_better, register_candidate
    from tasks.train import read_adapter_manifest

    if challenger.test is None:
        raise ValueError(f"challenger {challenger.id} has no test scores to be judged on")
    evo = settings.evolution
    client = MlflowClient()
    manifest = read_adapter_manifest(challenger.adapter_dir)
    run_id = (challenger.train_run_id or manifest.get("mlflow_run_id")
              or ctx.parent_run_id)
    genealogy = {
        "member": challenger.id, "parents": challenger.parents,
        "recipe": challenger.recipe.to_json(), "generation": challenger.generation,
        "data_hashes": ctx.data.hashes, "base_model_sha256": ctx.base_sha,
        "cycle_parent_run_id": ctx.parent_run_id,
    }
    # The llama.cpp engine serves the GGUF form: make it now, so a version it cannot run
    # is never registered (with the transformers engine, only where a base GGUF exists).
    base_gguf = None
    if settings.serving.engine == "llamacpp":
        base_gguf = base_gguf_path(ctx.model_path, settings.model.gguf)
    metrics = {**challenger.test.metrics,
               **(challenger.continuity.metrics if challenger.continuity else {})}
    candidate = Candidate(challenger.id, challenger.adapter_dir, run_id, metrics, genealogy,
                          base_gguf=base_gguf,
                          outcomes=challenger.test.outcomes or None,
                          split_hash=challenger.test.split_hash)
    version = register_candidate(client, candidate, evo.registry_model_name)
    previous = get_alias(client, evo.registry_model_name, CHAMPION)
    decision = promote_if_better(client, evo.registry_model_name, version.version,
                                 margin=evo.promotion_margin,
                                 tolerance=evo.regression_tolerance,
                                 verify_dir=challenger.adapter_dir)
    return Promotion(version=str(version.version), promoted=decision.promote,
                     reasons=decision.reasons,
                     previous_champion=str(previous.version) if previous else None)


@contextmanager
def breeding_llm(settings: Settings) -> Iterator[str | None]:
    """The breeding agents' OpenAI-compatible base URL (None: agents off), starting the
    embedded llama.cpp server only when the agents need it."""
    from engines.llama_server import EmbeddedLlamaServer

    evo = settings.evolution
    if not evo.use_agents or evo.generations == 0:
        yield None
        return
    if evo.llm_base_url:
        yield evo.llm_base_url
        return
    gguf = embedded_gguf_path(settings.teacher.embedded_model, settings.model.base)
    with EmbeddedLlamaServer(gguf, n_threads=cpu_threads(settings.model.threads)) as server:
        yield server.base_url
