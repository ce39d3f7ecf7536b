"""The self-improvement cycle, as one Prefect flow that reads like the pipeline.

    data (+ harvested traces) -> score the base -> train the initial population
         -> G x (plan [AutoGen agents, GA fallback] -> breed -> score -> select)
         -> pick the challenger -> promotion gate (MLflow registry alias `champion`)

Fitness is accuracy on the eval split; the frozen test set is used for the numbers a
person reads (base, best initial, each generation's best, champion) and for the gate.
Every finished step is kept in the cycle's journal (`flows/cycle_journal.py`) as the same
typed record the tasks return, so a killed cycle resumes where it stopped: each step below
first looks for its record in the journal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow

from evolora.logs import get_logger
from evolora.models import base_model_checksum
from evolora.progress import PROGRESS_FILE, Stage, current, progress_file, stage
from evolora.settings import EvolutionSettings, Settings, load_settings
from evolora.tracking import log_resolved_config, setup_mlflow
from evolora.vocabulary import CHAMPION, CYCLE_SUMMARY_ARTIFACT, CYCLE_TAG, STEP_TAG
from flows.common import generate_data, prepare_base_model
from flows.cycle_journal import CycleJournal
from flows.cycle_tasks import (
    CycleContext,
    breed_child,
    breeding_llm,
    evaluate_member,
    mix_in_serving_traces,
    plan_generation,
    promote_challenger,
    train_member,
    warm_start_member,
)
from tasks.records import (
    CycleSummary,
    GenerationPlan,
    GenerationResult,
    InitialRecipe,
    Member,
    Promotion,
    ScoredSplit,
    Scores,
    SpecialistMergeReport,
)

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
    started, resumed = time.perf_counter(), journal.resumed
    if resumed:
        log.info("cycle.resume", cycle=journal.cycle_id, members=list(journal.members))
    recipes = seed_population(evo, settings.data.skills, seed=settings.train.seed,
                              max_steps=settings.train.max_steps)
    test_slots = plan_progress(settings, journal, recipes)
    with _parent_run(settings, journal) as parent_run_id:
        model_path = prepare_base_model(settings)
        if journal.data is None:
            with stage("data"):
                since = CycleJournal.harvest_watermark(journal.folder.parent)
                synthetic = generate_data(settings, parent_run_id)
                journal.update(data=mix_in_serving_traces(settings, synthetic, since,
                                                          parent_run_id))
        ctx = CycleContext(cycle_id=journal.cycle_id, model_path=model_path,
                           base_sha=base_model_checksum(model_path), data=journal.data,
                           parent_run_id=parent_run_id, adapters_dir=journal.adapters_dir)

        def scored(member: Member, split: ScoredSplit) -> Member:
            """The member with its scores on `split`, evaluated once per cycle."""
            member = journal.members[member.id]
            if member.scores(split) is None:
                key = f"eval/{member.id}/{split}"
                if split == "test":  # one of the test evaluations planned without a member
                    key = next(test_slots, key)
                with stage(key, f"evaluate {member.id} ({split})", ctx.data.rows[split],
                           "eval_problem"):
                    member = journal.keep(member.with_scores(
                        evaluate_member(settings, ctx, member, split)))
            return member

        if not journal.warm_start_checked:  # decided once: a resumed cycle keeps its start
            journal.update(warm_start=warm_start_member(settings, ctx), warm_start_checked=True)
        recipes = continue_champion(recipes, journal.warm_start)

        if journal.base_test is None:
            with stage("eval/base/test"):
                journal.update(base_test=evaluate_member(settings, ctx, None, "test"))

        population = []
        for member_id, recipe in recipes.items():
            if member_id not in journal.members:
                with stage(f"train/{member_id}"):
                    start = None
                    if recipe.init_from:
                        start = journal.members.get(recipe.init_from) or journal.warm_start
                    journal.keep(train_member(settings, ctx, member_id, recipe, start))
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
                population, result = select_generation(evo, plan, population + children,
                                                       lambda m: scored(m, "test"))
                generations.append(result)

        challenger, reason = pick_challenger(population, best_initial,
                                             lambda m: scored(m, "test").test.accuracy)
        challenger = scored(challenger, "test")
        if journal.promotion is None:
            with stage("gate"):
                journal.update(promotion=promote_challenger(settings, ctx, challenger))

        summary = summarize(
            journal, evo, base=journal.base_test, best_initial=scored(best_initial, "test"),
            generations=generations, challenger=challenger, challenger_reason=reason,
            specialist_merge=specialist_merge_report(journal, lambda m: scored(m, "test")),
            resumed=resumed, wall_s_this_run=time.perf_counter() - started)
        log_cycle_summary(summary)
    for unused in test_slots:
        current().drop(unused)
    journal.update(status="done", summary=summary)
    return summary


def log_cycle_summary(summary: CycleSummary) -> None:
    """The summary on the active (the cycle's parent) run: `summary_*` metrics and the
    whole record as `cycle-summary.json`, what the web console's progress page reads."""
    mlflow.log_metrics({f"summary_{k}": float(v) for k, v in summary.model_dump().items()
                        if isinstance(v, float)})
    mlflow.log_dict(summary.model_dump(mode="json"), CYCLE_SUMMARY_ARTIFACT)


def plan_progress(settings: Settings, journal: CycleJournal,
                  recipes: dict[str, InitialRecipe]) -> Iterator[str]:
    """Tell the progress display every stage this cycle will run, and which a resumed run
    already has: the remaining time is estimated from what is left.

    Which members are scored on the test set is known only as the cycle goes (each
    generation's best, the challenger, the specialists' merge and its parents), so that
    many test evaluations are planned as slots; returns the slots' keys, to be taken in turn.
    """
    evo, progress = settings.evolution, current()
    skills = len(settings.data.skills)
    n_eval, n_test = skills * settings.data.eval_per_skill, skills * settings.data.test_per_skill
    stages = [Stage("data", "generate data", 1, "data"),
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
    children = sum(len(plan.children) for plan in journal.plans.values())
    n_members = len(recipes) + max(children, evo.generations * evo.children_per_generation + 1)
    tested = sum(m.test is not None for m in journal.members.values())
    slots = [f"eval/test/{i}" for i in range(max(0, min(n_members, evo.generations + 5)
                                                  - tested))]
    stages += [Stage(key, "evaluate on the test set", n_test, "eval_problem") for key in slots]
    stages.append(Stage("gate", "promotion gate", 1, "step"))
    progress.plan(stages)
    done = {"data": journal.data is not None, "eval/base/test": journal.base_test is not None,
            "gate": journal.promotion is not None,
            **{f"plan/{g}": True for g in journal.plans}}
    for member in journal.members.values():
        done[f"{'train' if member.generation == 0 else 'breed'}/{member.id}"] = True
        done[f"eval/{member.id}/eval"] = member.eval is not None
    for key in (key for key, finished in done.items() if finished):
        progress.finish(key)
    return iter(slots)


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


def select_generation(evo: EvolutionSettings, plan: GenerationPlan, pool: list[Member],
                      with_test: Callable[[Member], Member]
                      ) -> tuple[list[Member], GenerationResult]:
    """The survivors of `pool` (elitist truncation by fitness) and the generation's record,
    whose best member is scored on the test set through `with_test`."""
    from tasks.evolve import population_diversity, select_survivors

    kept = {m.id for m in select_survivors(pool, population_size=evo.population_size,
                                           elite=evo.elite)}
    # In pool order, as the next generation's agents and GA read the population.
    survivors = [m for m in pool if m.id in kept]
    best = with_test(max(survivors, key=lambda m: m.fitness))
    return survivors, GenerationResult(
        generation=plan.generation,
        policy=plan.decision.policy,
        policy_reason=plan.decision.reason,
        children=[f"g{plan.generation}-c{i}" for i in range(len(plan.children))],
        survivors=sorted(kept),
        best_id=best.id,
        best_fitness=best.fitness,
        best=best.test.accuracy,
        best_hard=best.test.hard,
        diversity=population_diversity([m.adapter_dir for m in survivors]),
    )


def pick_challenger(population: list[Member], best_initial: Member,
                    test_accuracy: Callable[[Member], float]) -> tuple[Member, str]:
    """The member the gate weighs against the champion, and why it is that one.

    The final population's fittest (eval split), unless it scores below the best initial
    member on the frozen test set: fitness is a few dozen problems, and a cycle should not
    offer less than it started with. The test set already decides promotion; this makes
    the best initial member one more incumbent the challenger has to match.
    """
    fittest = max(population, key=lambda m: m.fitness)
    if fittest.id == best_initial.id:
        return fittest, f"{fittest.id}: the fittest on the eval split"
    fittest_test, initial_test = test_accuracy(fittest), test_accuracy(best_initial)
    if fittest_test < initial_test:
        return best_initial, (f"{best_initial.id}: the fittest, {fittest.id}, scored "
                              f"{fittest_test:.3f} on the test set, below the best initial "
                              f"member's {initial_test:.3f}")
    return fittest, f"{fittest.id}: the fittest on the eval split"


def specialist_merge_report(journal: CycleJournal, with_test: Callable[[Member], Member]
                            ) -> SpecialistMergeReport | None:
    """Test accuracy of the specialists' composition against each of its parents."""
    merged = [m for m in journal.members.values() if m.is_specialist_merge]
    if not merged:
        return None
    child = with_test(merged[0])
    parents = {p: with_test(journal.members[p]).test.accuracy for p in child.parents}
    return SpecialistMergeReport(
        id=child.id, accuracy=child.test.accuracy, parents=parents,
        rule=child.merge_rule or "mean", weights=list(child.recipe.weights),
        beats_each_parent=all(child.test.accuracy > a for a in parents.values()))


def continue_champion(recipes: dict[str, InitialRecipe], champion: Member | None
                      ) -> dict[str, InitialRecipe]:
    """The population's recipes with the generalist continuing `champion` (warm start):
    the specialists continue the generalist as before, so the whole night builds on it."""
    if champion is None:
        return recipes
    return {member_id: recipe.model_copy(update={"init_from": champion.id})
            if recipe.role == "generalist" and recipe.init_from is None else recipe
            for member_id, recipe in recipes.items()}


def summarize(journal: CycleJournal, evo: EvolutionSettings, *, base: Scores,
              best_initial: Member, generations: list[GenerationResult], challenger: Member,
              challenger_reason: str, specialist_merge: SpecialistMergeReport | None,
              resumed: bool, wall_s_this_run: float) -> CycleSummary:
    """The cycle's summary: each candidate's test accuracy, the gate's verdict, the time."""
    from tasks.registry import get_alias, version_metrics

    promotion: Promotion = journal.promotion
    champion = get_alias(MlflowClient(), evo.registry_model_name, CHAMPION)
    champion_metrics = version_metrics(champion) if champion else {}
    return CycleSummary(
        cycle_id=journal.cycle_id,
        base=base.accuracy, base_hard=base.hard,
        best_initial=best_initial.test.accuracy, best_initial_hard=best_initial.test.hard,
        best_initial_id=best_initial.id,
        generations=generations,
        challenger=challenger.test.accuracy, challenger_hard=challenger.test.hard,
        challenger_id=challenger.id, challenger_reason=challenger_reason,
        champion=champion_metrics.get("test_accuracy", 0.0),
        champion_hard=champion_metrics.get("test_accuracy_hard", 0.0),
        champion_version=str(champion.version) if champion else None,
        promoted=promotion.promoted, registry_version=promotion.version,
        gate_reasons=promotion.reasons,
        specialist_merge=specialist_merge,
        started_from=journal.warm_start.id if journal.warm_start else None,
        resumed=resumed,
        wall_s=round(journal.worked_s, 1), wall_s_this_run=round(wall_s_this_run, 1),
        evolution_gain=challenger.test.accuracy - best_initial.test.accuracy,
        evolution_gain_hard=challenger.test.hard - best_initial.test.hard,
    )
