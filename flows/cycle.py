"""The self-improvement cycle, as one Prefect flow that reads like the pipeline.

    warm start (the registry's champion) -> tonight's data (fresh problems + harvested
         traces) -> the champion's own attempts -> the training mix (+ replay)
         -> score the base -> train the initial population, continuing the champion
         -> G x (plan [AutoGen agents, GA fallback] -> breed -> score -> select)
         -> pick the challenger -> promotion gate (MLflow registry alias `champion`)

Fitness is accuracy on the eval split; the frozen test set is kept for the judgement: the
challenger's numbers a person reads and the gate, which pairs it problem by problem with
the champion (`tasks.paired`).
Every finished step is kept in the cycle's journal (`flows/cycle_journal.py`) as the same
typed record the tasks return, so a killed cycle resumes where it stopped: each step below
first looks for its record in the journal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from prefect import flow

from evolora.logs import get_logger
from evolora.models import base_model_checksum
from evolora.progress import PROGRESS_FILE, Stage, current, progress_file, stage
from evolora.settings import EvolutionSettings, Settings, load_settings
from evolora.tracking import log_resolved_config, setup_mlflow
from evolora.vocabulary import CYCLE_SUMMARY_ARTIFACT, CYCLE_TAG, STEP_TAG
from flows.common import generate_data, prepare_base_model
from flows.cycle_data import (
    attempt_with_champion,
    compose_night_data,
    earlier_training_splits,
    train_seed,
)
from flows.cycle_journal import CycleJournal
from flows.cycle_summary import summarize
from flows.cycle_tasks import (
    CycleContext,
    breed_child,
    breeding_llm,
    evaluate_member,
    mix_in_serving_traces,
    plan_generation,
    promote_challenger,
    rescore_champion,
    train_member,
    warm_start_member,
)
from tasks.records import (
    CycleSummary,
    GenerationPlan,
    GenerationResult,
    InitialRecipe,
    Member,
    ScoredSplit,
    Trunk,
)
from tasks.train.trunk import TRUNK_DIR, WsdSchedule, decay_steps_for, latest_trunk

log = get_logger(__name__)


@flow(name="evolora-cycle")
def cycle_flow(config: str | None = None, new: bool = False,
               settings: Settings | None = None) -> CycleSummary:
    """One self-improvement cycle; resumes the latest unfinished one unless `new`.

    `settings` (what the CLI loaded) wins over `config` (a name in configs/ or a YAML path,
    as a deployment passes it; None: $EVOLORA_CONFIG or `default`).
    """
    settings = settings or load_settings(config)
    setup_mlflow(settings)
    journal = CycleJournal.open(settings.paths.data_dir / "cycles", new=new)
    # The web console reads this file to show the running cycle's stage and share done.
    with progress_file(journal.folder / PROGRESS_FILE):
        return run_cycle(settings, journal)


def run_cycle(settings: Settings, journal: CycleJournal) -> CycleSummary:
    """The cycle's steps, each skipped when the journal already has its record."""
    from tasks.evolve import seed_population

    evo = settings.evolution
    cycles_dir = journal.folder.parent
    started, resumed = time.perf_counter(), journal.resumed
    down_s = journal.count_resume() if resumed else None
    if resumed:
        # A recovery, counted: the journal, this log line, the parent run's metrics and the
        # service's evolora_cycle_resumes_total (serving/ops_metrics.py).
        log.info("cycle.resume", cycle=journal.cycle_id, members=list(journal.members),
                 resumes=journal.resumes, down_s=down_s)
    recipes = seed_population(evo, settings.data.skills, seed=settings.train.seed,
                              max_steps=settings.train.max_steps)
    plan_progress(settings, journal, recipes)
    with _parent_run(settings, journal) as parent_run_id:
        if resumed:
            mlflow.log_metric("cycle_resumes", journal.resumes, step=journal.resumes)
            if down_s is not None:
                mlflow.log_metric("cycle_resume_down_s", down_s, step=journal.resumes)
        model_path = prepare_base_model(settings)
        base_sha = base_model_checksum(model_path)
        if not journal.warm_start_checked:  # decided once: a resumed cycle keeps its start
            champion = warm_start_member(settings, base_sha, journal.adapters_dir)
            trunk = None
            if champion is not None and evo.trunk:
                trunk = latest_trunk(cycles_dir, journal.cycle_id, base_sha)
            journal.update(warm_start=champion, trunk=trunk, warm_start_checked=True)
        champion = journal.warm_start
        if journal.data is None:
            if journal.template_data is None:
                with stage("data"):
                    since = CycleJournal.harvest_watermark(cycles_dir)
                    synthetic = generate_data(settings, parent_run_id,
                                              train_seed(settings, journal.night))
                    journal.update(template_data=mix_in_serving_traces(
                        settings, synthetic, since, parent_run_id))
            if not journal.self_checked:
                if champion is not None and settings.data.self_problems_per_skill:
                    attempts = (settings.data.self_problems_per_skill * len(settings.data.skills)
                                * settings.data.self_attempts)
                    with stage("self", f"{champion.id} attempts fresh problems", attempts,
                               "eval_problem"):
                        path, report = attempt_with_champion(
                            settings, model_path, journal.template_data, champion,
                            journal.night, parent_run_id)
                        journal.update(self_rows=path, self_report=report)
                journal.update(self_checked=True)
            with stage("mix", "compose the training mix", 1, "step"):
                journal.update(data=compose_night_data(
                    settings, journal.template_data, journal.self_rows, journal.self_report,
                    earlier_training_splits(cycles_dir, journal.cycle_id), journal.night,
                    parent_run_id))
        ctx = CycleContext(cycle_id=journal.cycle_id, model_path=model_path, base_sha=base_sha,
                           data=journal.data, parent_run_id=parent_run_id,
                           adapters_dir=journal.adapters_dir)

        def scored(member: Member, split: ScoredSplit) -> Member:
            """The member with its scores on `split`, evaluated once per cycle."""
            member = journal.members[member.id]
            if member.scores(split) is None:
                key = f"eval/{member.id}/{split}" if split == "eval" else f"eval/{split}"
                with stage(key, f"evaluate {member.id} ({split})", ctx.data.rows[split],
                           "eval_problem"):
                    member = journal.keep(member.with_scores(
                        evaluate_member(settings, ctx, member, split)))
            return member

        recipes = continue_champion(recipes, journal.trunk or champion)
        if journal.base_test is None:
            with stage("eval/base/test"):
                journal.update(base_test=evaluate_member(settings, ctx, None, "test"))
        if champion is not None and not journal.champion_checked:
            with stage("eval/champion/test", f"re-score {champion.id} on this test set (if "
                       "the registry has no outcomes of it here)", 1, "step"):
                journal.update(champion_test=rescore_champion(settings, ctx, champion),
                               champion_checked=True)

        population = []
        for member_id, recipe in recipes.items():
            if member_id not in journal.members:
                with stage(f"train/{member_id}"):
                    start = None
                    if recipe.init_from:
                        start = journal.members.get(recipe.init_from) or champion
                    wsd = None
                    if evo.trunk and recipe.role == "generalist":
                        # The nights' one schedule: this run continues the trunk (if any)
                        # and keeps the next one before it decays.
                        wsd = WsdSchedule(
                            decay_steps=decay_steps_for(recipe.steps, evo.trunk_decay_fraction),
                            save_to=journal.folder / TRUNK_DIR, cycle_id=journal.cycle_id,
                            base_model_sha256=base_sha, resume=journal.trunk)
                        if journal.trunk is not None:
                            start = trunk_member(journal.trunk, settings)
                    journal.keep(train_member(settings, ctx, member_id, recipe, start, wsd))
            population.append(scored(journal.members[member_id], "eval"))
        best_initial = max(population, key=lambda m: m.fitness)

        generations = []
        with breeding_llm(settings) as llm_base_url:
            for generation in range(1, evo.generations + 1):
                if generation not in journal.plans:
                    with stage(f"plan/{generation}"):
                        journal.plans[generation] = plan_generation(
                            evo, settings.train.seed, generation, population, llm_base_url)
                        journal.save()
                plan = journal.plans[generation]
                children = []
                for index, child in enumerate(plan.children):
                    child_id = f"g{generation}-c{index}"
                    if child_id not in journal.members:
                        with stage(f"breed/{child_id}", f"breed {child_id}", 1, "breed"):
                            parents = [journal.members[p] for p in child.parents]
                            start = journal.members[child.start] if child.start else None
                            journal.keep(breed_child(settings, ctx, child_id, generation,
                                                     child, parents, start))
                    children.append(scored(journal.members[child_id], "eval"))
                population, result = select_generation(evo, plan, population + children)
                generations.append(result)

        challenger, reason = pick_challenger(population, best_initial)
        challenger = scored(challenger, "test")
        if ctx.data.continuity_test_path is not None:
            challenger = scored(challenger, "continuity")
        if journal.promotion is None:
            with stage("gate"):
                journal.update(promotion=promote_challenger(settings, ctx, challenger))

        summary = summarize(
            journal, evo, best_initial=best_initial, generations=generations,
            challenger=challenger, challenger_reason=reason, resumed=resumed,
            wall_s_this_run=time.perf_counter() - started)
        log_cycle_summary(summary)
    journal.update(status="done", summary=summary)
    return summary


def log_cycle_summary(summary: CycleSummary) -> None:
    """The summary on the active (the cycle's parent) run: `summary_*` metrics and the
    whole record as `cycle-summary.json`, what the web console's progress page reads."""
    mlflow.log_metrics({f"summary_{k}": float(v) for k, v in summary.model_dump().items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})
    mlflow.log_dict(summary.model_dump(mode="json"), CYCLE_SUMMARY_ARTIFACT)


def plan_progress(settings: Settings, journal: CycleJournal,
                  recipes: dict[str, InitialRecipe]) -> None:
    """Tell the progress display every stage this cycle will run, and which a resumed run
    already has: the remaining time is estimated from what is left. (The champion's
    attempts and its re-scoring join the plan when the cycle knows it has a champion.)"""
    evo, data, progress = settings.evolution, settings.data, current()
    skills = len(data.skills)
    n_eval, n_test = skills * data.eval_per_skill, skills * data.test_per_skill
    stages = [Stage("data", "generate data", 1, "data"),
              Stage("mix", "compose the training mix", 1, "step"),
              Stage("eval/base/test", "evaluate the base model (test)", n_test, "eval_problem")]
    for member_id, recipe in recipes.items():
        stages += [Stage(f"train/{member_id}", f"train {member_id} ({recipe.role}: "
                         f"{', '.join(recipe.skills)})", recipe.steps, "train_step"),
                   Stage(f"eval/{member_id}/eval", f"evaluate {member_id} (eval)", n_eval,
                         "eval_problem")]
    for generation in range(1, evo.generations + 1):
        stages.append(Stage(f"plan/{generation}", f"plan generation {generation}", 1, "plan"))
        # The specialists' composition joins generation 1's children.
        extra = int(generation == 1 and evo.population_size > 2)
        for index in range(evo.children_per_generation + extra):
            child_id = f"g{generation}-c{index}"
            stages += [Stage(f"breed/{child_id}", f"breed {child_id}", 1, "breed"),
                       Stage(f"eval/{child_id}/eval", f"evaluate {child_id} (eval)", n_eval,
                             "eval_problem")]
    # Only the challenger is scored on the test sets: selection uses the eval split.
    stages.append(Stage("eval/test", "evaluate the challenger (test)", n_test, "eval_problem"))
    if data.continuity_test_per_skill:
        stages.append(Stage("eval/continuity", "evaluate the challenger (continuity test)",
                            skills * data.continuity_test_per_skill, "eval_problem"))
    stages.append(Stage("gate", "promotion gate", 1, "step"))
    progress.plan(stages)
    done = {"data": journal.template_data is not None or journal.data is not None,
            "mix": journal.data is not None, "eval/base/test": journal.base_test is not None,
            "gate": journal.promotion is not None,
            "eval/test": any(m.test for m in journal.members.values()),
            "eval/continuity": any(m.continuity for m in journal.members.values()),
            **{f"plan/{g}": True for g in journal.plans}}
    for member in journal.members.values():
        done[f"{'train' if member.generation == 0 else 'breed'}/{member.id}"] = True
        done[f"eval/{member.id}/eval"] = member.eval is not None
    for key in (key for key, finished in done.items() if finished):
        progress.finish(key)


@contextmanager
def _parent_run(settings: Settings, journal: CycleJournal) -> Iterator[str]:
    """The cycle's MLflow parent run (the same one when a cycle resumes); yields its id."""
    with mlflow.start_run(run_id=journal.parent_run_id,
                          run_name=None if journal.parent_run_id else f"cycle-{journal.cycle_id}",
                          tags={STEP_TAG: "cycle", CYCLE_TAG: journal.cycle_id}
                          ) as parent:
        if journal.parent_run_id is None:
            journal.update(parent_run_id=parent.info.run_id)
            log_resolved_config(settings, {"cycle_id": journal.cycle_id})
        yield parent.info.run_id


def select_generation(evo: EvolutionSettings, plan: GenerationPlan, pool: list[Member]
                      ) -> tuple[list[Member], GenerationResult]:
    """The survivors of `pool` (elitist truncation by fitness) and the generation's record."""
    from tasks.evolve import population_diversity, select_survivors

    kept = {m.id for m in select_survivors(pool, population_size=evo.population_size,
                                           elite=evo.elite)}
    # In pool order, as the next generation's agents and GA read the population.
    survivors = [m for m in pool if m.id in kept]
    best = max(survivors, key=lambda m: m.fitness)
    return survivors, GenerationResult(
        generation=plan.generation,
        policy=plan.decision.policy,
        policy_reason=plan.decision.reason,
        children=[f"g{plan.generation}-c{i}" for i in range(len(plan.children))],
        survivors=sorted(kept),
        best_id=best.id,
        best_fitness=best.fitness,
        best_fitness_hard=best.eval.hard if best.eval else 0.0,
        diversity=population_diversity([m.adapter_dir for m in survivors]),
    )


def pick_challenger(population: list[Member], best_initial: Member) -> tuple[Member, str]:
    """The member the gate weighs against the champion, and why it is that one: the final
    population's fittest on the eval split (the first of equals: an older member before a
    child that only ties it). Only it is scored on the test set, which is kept for the
    judgement a person reads and the gate."""
    fittest = max(population, key=lambda m: m.fitness)
    if fittest.id != best_initial.id and fittest.fitness <= best_initial.fitness:
        fittest = best_initial
    return fittest, f"{fittest.id}: the fittest on the eval split ({fittest.fitness:.3f})"


def continue_champion(recipes: dict[str, InitialRecipe], start: Member | Trunk | None
                      ) -> dict[str, InitialRecipe]:
    """The population's recipes with the generalist continuing `start` (warm start): an
    earlier night's trunk, else the champion. The specialists continue the generalist as
    before, so the whole night builds on it."""
    if start is None:
        return recipes
    start_id = start.member_id if isinstance(start, Trunk) else start.id
    return {member_id: recipe.model_copy(update={"init_from": start_id})
            if recipe.role == "generalist" and recipe.init_from is None else recipe
            for member_id, recipe in recipes.items()}


def trunk_member(trunk: Trunk, settings: Settings) -> Member:
    """The trunk as the member tonight's generalist starts from."""
    # Inherited, not trained tonight: a generalist recipe of the steps behind it.
    from tasks.evolve import adapter_rank

    recipe = InitialRecipe(role="generalist", skills=list(settings.data.skills),
                           seed=settings.train.seed, steps=trunk.steps)
    config = json.loads((trunk.folder / "adapter_config.json").read_text())
    return Member(id=trunk.member_id, adapter_dir=trunk.folder, rank=adapter_rank(config),
                  generation=0, recipe=recipe)
