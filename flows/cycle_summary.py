"""A cycle's summary as a person reads it, every comparison paired on the same problems.

Two accuracies side by side are mostly noise at a few hundred problems; what the summary
states for each comparison is the difference on the same problems with its 95% interval
(`tasks.paired`): the challenger against the champion it was gated against and against
the base (test set), against the best initial member and the specialists' merge against
each parent (eval split, what selection saw).
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from evolora.settings import EvolutionSettings
from evolora.vocabulary import CHAMPION
from flows.cycle_journal import CycleJournal
from tasks.paired import compare_paired
from tasks.records import (
    CycleSummary,
    GenerationResult,
    Member,
    Promotion,
    Scores,
    SpecialistMergeReport,
)
from tasks.registry.versions import get_version, version_outcomes
from tasks.train.trunk import TRUNK_DIR, read_trunk


def summarize(journal: CycleJournal, evo: EvolutionSettings, *, best_initial: Member,
              generations: list[GenerationResult], challenger: Member,
              challenger_reason: str, resumed: bool, wall_s_this_run: float) -> CycleSummary:
    """The cycle's summary: the champion's test accuracy after the gate, the challenger's,
    the base's, the paired comparisons behind them, the mix and the time."""
    from tasks.registry import get_alias, version_metrics

    client = MlflowClient()
    promotion: Promotion = journal.promotion
    base: Scores = journal.base_test
    assert challenger.test is not None and challenger.eval is not None
    champion = get_alias(client, evo.registry_model_name, CHAMPION)
    champion_metrics = version_metrics(champion) if champion else {}
    comparisons = {f"challenger {challenger.id} vs base (test)":
                   _describe(base.outcomes, challenger.test.outcomes)}
    if promotion.previous_champion:
        previous = get_version(client, evo.registry_model_name, promotion.previous_champion)
        recorded = version_outcomes(previous)
        if recorded is not None and recorded[0] == challenger.test.split_hash:
            key = f"challenger {challenger.id} vs champion v{previous.version} (test)"
            comparisons[key] = _describe(recorded[1], challenger.test.outcomes)
    if challenger.id != best_initial.id and best_initial.eval is not None:
        key = f"challenger {challenger.id} vs best initial {best_initial.id} (eval)"
        comparisons[key] = _describe(best_initial.eval.outcomes, challenger.eval.outcomes)
    merge = specialist_merge_report(journal)
    if merge is not None:
        comparisons.update({f"{merge.id} vs {parent} (eval)": text
                            for parent, text in merge.comparisons.items()})
    mix = journal.data.mix if journal.data else None
    self_report = journal.self_report
    tried = sum(self_report.problems.values()) if self_report else 0
    kept_trunk = read_trunk(journal.folder / TRUNK_DIR)
    return CycleSummary(
        cycle_id=journal.cycle_id,
        base=base.accuracy, base_hard=base.hard,
        best_initial=best_initial.fitness,
        best_initial_hard=best_initial.eval.hard if best_initial.eval else 0.0,
        best_initial_id=best_initial.id,
        generations=generations,
        challenger=challenger.test.accuracy, challenger_hard=challenger.test.hard,
        challenger_id=challenger.id, challenger_reason=challenger_reason,
        champion=champion_metrics.get("test_accuracy", 0.0),
        champion_hard=champion_metrics.get("test_accuracy_hard", 0.0),
        champion_version=str(champion.version) if champion else None,
        promoted=promotion.promoted, registry_version=promotion.version,
        gate_reasons=promotion.reasons,
        specialist_merge=merge,
        started_from=(journal.trunk.member_id if journal.trunk
                      else journal.warm_start.id if journal.warm_start else None),
        trunk_steps=kept_trunk.steps if kept_trunk else 0,
        resumed=resumed,
        resumes=journal.resumes,
        wall_s=round(journal.worked_s, 1), wall_s_this_run=round(wall_s_this_run, 1),
        evolution_gain=challenger.fitness - best_initial.fitness,
        evolution_gain_hard=(challenger.eval.hard
                             - (best_initial.eval.hard if best_initial.eval else 0.0)),
        comparisons=comparisons,
        test_problems=int(challenger.test.metrics.get("test_problems", 0)),
        challenger_continuity=challenger.continuity.accuracy if challenger.continuity else None,
        champion_continuity=champion_metrics.get("continuity_accuracy"),
        train_steps=cycle_train_steps(journal, evo.finetune_steps),
        self_yield=(sum(self_report.solved.values()) / tried) if tried else None,
        mix_rows=dict(mix.by_source) if mix else {},
        champion_groups={k.removeprefix("test_accuracy_"): v
                         for k, v in sorted(champion_metrics.items())
                         if k.startswith("test_accuracy_")},
    )


def specialist_merge_report(journal: CycleJournal) -> SpecialistMergeReport | None:
    """The specialists' composition against each of its parents on the eval split."""
    merged = [m for m in journal.members.values() if m.is_specialist_merge and m.eval]
    if not merged:
        return None
    child = merged[0]
    assert child.eval is not None
    parents = {p: journal.members[p] for p in child.parents}
    return SpecialistMergeReport(
        id=child.id, accuracy=child.fitness,
        parents={p: m.fitness for p, m in parents.items()},
        rule=child.merge_rule or "mean", weights=list(child.recipe.weights),
        beats_each_parent=all(child.fitness > m.fitness for m in parents.values()),
        comparisons={p: _describe(m.eval.outcomes, child.eval.outcomes)
                     for p, m in parents.items() if m.eval is not None})


def cycle_train_steps(journal: CycleJournal, finetune_steps: int) -> int:
    """Optimizer steps this cycle trained: initial members, and continued-training
    mutations of children (`finetune_steps` when the plan named no number)."""
    steps = 0
    for member in journal.members.values():
        recipe = member.recipe
        if recipe.kind == "initial":
            steps += recipe.steps
        elif recipe.mutation.kind == "finetune":
            steps += max(2, recipe.mutation.steps or finetune_steps)
    return steps


def _describe(a: dict[str, bool], b: dict[str, bool]) -> str:
    if not a or not b or not set(a) & set(b):
        return "not comparable: not scored on the same problems"
    return compare_paired(a, b).describe()
