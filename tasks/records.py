"""The records that cross a stage boundary in a cycle, each defined once.

    DataSplits -> Member (trained or bred) -> Scores on a split -> GenerationPlan
               -> GenerationResult -> Promotion -> CycleSummary

They are pydantic models: typed where a stage builds them, JSON in the cycle journal
(`flows/cycle_journal.py`), the summary file and MLflow, and read back typed by the flow,
the CLI, bench/ and the tests, so a renamed field fails at once, not 25 minutes into a demo.
Records are frozen: a stage that adds to one (an evaluation adds scores to a member)
returns a new copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolora.vocabulary import CombinationType

Split = Literal["train", "eval", "test", "continuity"]
# `continuity`: the older, smaller frozen test set, still reported so numbers stay comparable
# with earlier nights; the gate and the numbers a person reads use `test`.
ScoredSplit = Literal["eval", "test", "continuity"]
MAX_FINETUNE_STEPS = 50
MAX_PARENTS = 4


class Record(BaseModel):
    """A frozen record: unknown fields are errors, so a typo in a journal never passes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- data ----------------------------------------------------------------------------------


class HarvestReport(Record):
    """What the harvest step mixed into the training split, and where the next one starts."""

    kept: int = 0
    candidates: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    # The newest trace time seen: the next cycle harvests from here.
    watermark: float | None = None


class SelfAttemptReport(Record):
    """What the champion's own sampled attempts gave (STaR / ReST-EM): per skill x level,
    problems tried and solved by at least one verified attempt."""

    champion: str
    attempts_per_problem: int
    problems: dict[str, int] = Field(default_factory=dict)
    solved: dict[str, int] = Field(default_factory=dict)
    verified_attempts: int = 0
    attempts: int = 0
    # Rows made: the champion's own verified traces, and program-written traces of the
    # problems no attempt solved.
    self_rows: int = 0
    fallback_rows: int = 0
    seconds: float = 0.0

    def yield_of(self, cell: str) -> float:
        """Share of a skill x level cell's problems solved by some verified attempt."""
        tried = self.problems.get(cell, 0)
        return self.solved.get(cell, 0) / tried if tried else 0.0


class MixReport(Record):
    """Tonight's training rows by source, their shares, and how diverse they are."""

    rows: int
    by_source: dict[str, int]
    shares: dict[str, float]
    # Left out by the caps, per source.
    capped: dict[str, int] = Field(default_factory=dict)
    by_skill_level: dict[str, int] = Field(default_factory=dict)
    diversity: dict[str, float] = Field(default_factory=dict)
    self_attempts: SelfAttemptReport | None = None


class DataSplits(Record):
    """The splits a cycle trains, selects and is judged on, with their content hashes."""

    train_path: Path
    eval_path: Path
    test_path: Path
    # sha256 of each split's content ("train", "eval", "test"; "harvested" when traces joined).
    hashes: dict[str, str]
    rows: dict[str, int]
    # The generation report: kept and dropped per skill and reason, diversity, teacher use.
    report: dict[str, object] = Field(default_factory=dict)
    teacher: str = "none"
    harvest: HarvestReport | None = None
    continuity_test_path: Path | None = None
    # How tonight's training mix was composed (template, self, harvested, replay rows).
    mix: MixReport | None = None

    def path(self, split: Split) -> Path:
        """The folder of one split."""
        if split == "continuity":
            if self.continuity_test_path is None:
                raise ValueError("this cycle has no continuity test set "
                                 "(data.continuity_test_per_skill is 0)")
            return self.continuity_test_path
        return {"train": self.train_path, "eval": self.eval_path, "test": self.test_path}[split]


# -- scores --------------------------------------------------------------------------------


class Scores(Record):
    """A candidate's metrics on one split: `<split>_accuracy`, per level, skill, skill x level."""

    split: ScoredSplit
    metrics: dict[str, float]
    run_id: str | None = None
    # Each problem's outcome (id -> solved), for paired comparisons on the same problems.
    outcomes: dict[str, bool] = Field(default_factory=dict)
    # The content hash of the split scored: outcomes compare only within one test set.
    split_hash: str | None = None

    @property
    def accuracy(self) -> float:
        return self.metrics[f"{self.split}_accuracy"]

    @property
    def hard(self) -> float:
        """Accuracy on the hard (two-step) level; 0 when the split has none."""
        return self.metrics.get(f"{self.split}_accuracy_hard", 0.0)


# -- members and how they were made --------------------------------------------------------


class Mutation(BaseModel):
    """How a child is changed after cross-over."""

    kind: Literal["none", "noise", "rank", "finetune"] = "none"
    strength: float = Field(0.0, ge=0.0, le=1.0, description="noise: relative std of the noise")
    rank: int | None = Field(None, gt=0, le=512, description="rank: the child's new LoRA rank")
    steps: int | None = Field(
        None, ge=1, le=MAX_FINETUNE_STEPS, description="finetune: training steps"
    )


class Trunk(Record):
    """A kept trunk: where it is, how many optimizer steps it has behind it in all nights,
    which cycle wrote it and on which base."""

    folder: Path
    steps: int
    cycle_id: str
    base_model_sha256: str
    learning_rate: float

    @property
    def member_id(self) -> str:
        """The name the genealogy gives it (`trunk-20261208-010203`)."""
        return f"trunk-{self.cycle_id}"


class InitialRecipe(Record):
    """How an initial member is trained: on which skills, from where, for how long."""

    kind: Literal["initial"] = "initial"
    role: Literal["generalist", "specialist"]
    skills: list[str]
    seed: int
    steps: int
    # The member whose adapter this one continues training (specialists continue the
    # generalist), or None for a fresh LoRA.
    init_from: str | None = None

    def to_json(self) -> dict[str, object]:
        """The recipe as written into manifests, registry genealogy and tags."""
        return self.model_dump(mode="json")


class ChildRecipe(Record):
    """How a child is bred: the parents' combination and the mutation after it."""

    kind: Literal["child"] = "child"
    combination_type: str
    weights: list[float]
    density: float = 0.5
    mutation: Mutation = Field(default_factory=Mutation)
    # The member the parents continued, for merges of what each learnt since it.
    start: str | None = None

    def to_json(self) -> dict[str, object]:
        """The recipe as written into manifests, registry genealogy and tags (`start` only
        when there is one)."""
        return self.model_dump(mode="json", exclude={"start"} if self.start is None else None)


Recipe = Annotated[InitialRecipe | ChildRecipe, Field(discriminator="kind")]


class Member(Record):
    """One adapter of the population: where it lives, how it was made, how it scored."""

    id: str
    adapter_dir: Path
    rank: int
    generation: int
    parents: list[str] = Field(default_factory=list)
    recipe: Recipe
    train_run_id: str | None = None
    # Set on generation 1's composition of the specialists: how they were merged.
    merge_rule: str | None = None
    eval: Scores | None = None
    test: Scores | None = None
    continuity: Scores | None = None

    @property
    def fitness(self) -> float:
        """Accuracy on the eval split (what selection uses); 0 before it is evaluated."""
        return self.eval.accuracy if self.eval else 0.0

    @property
    def role(self) -> str | None:
        return self.recipe.role if isinstance(self.recipe, InitialRecipe) else None

    @property
    def is_specialist_merge(self) -> bool:
        return self.merge_rule is not None

    def scores(self, split: ScoredSplit) -> Scores | None:
        return {"eval": self.eval, "test": self.test, "continuity": self.continuity}[split]

    def with_scores(self, scores: Scores) -> Member:
        """A copy of this member carrying `scores` for their split."""
        return self.model_copy(update={scores.split: scores})


# -- breeding plans ------------------------------------------------------------------------


class ChildPlan(BaseModel):
    """One child as the breeding agents or the GA propose it."""

    parents: list[str] = Field(
        ..., min_length=1, max_length=MAX_PARENTS, description="member ids; 1 = mutation only"
    )
    combination_type: CombinationType = "linear"
    weights: list[float] = Field(..., description="one per parent, each 0..1, adding up "
                                 "to at most 1")
    density: float = Field(0.5, ge=0.0, le=1.0)
    mutation: Mutation = Field(default_factory=Mutation)


class BreedingPlan(BaseModel):
    """A generation's children, as proposed: what `validate_plan` accepts."""

    children: list[ChildPlan]
    rationale: str = ""


class PlannedChild(Record):
    """A child the cycle will breed: a proposed ChildPlan, or the specialists' composition
    (whose combination may be a merge of changes from a `start` member, "ties_from_start")."""

    parents: list[str]
    combination_type: str
    weights: list[float]
    density: float = 0.5
    mutation: Mutation = Field(default_factory=Mutation)
    start: str | None = None
    merge_rule: str | None = None

    def recipe(self) -> ChildRecipe:
        return ChildRecipe(combination_type=self.combination_type, weights=self.weights,
                           density=self.density, mutation=self.mutation, start=self.start)


class PlanDecision(Record):
    """Who decided a plan (the agents, or the GA fallback), why, and how long it took."""

    policy: Literal["agents", "ga"]
    reason: str
    seconds: float = 0.0


class GenerationPlan(Record):
    """A generation's children and who decided them (the agents, or the GA fallback)."""

    generation: int
    children: list[PlannedChild]
    decision: PlanDecision
    rationale: str = ""


# -- outcomes ------------------------------------------------------------------------------


class GenerationResult(Record):
    """What one generation did: its children, survivors and best member."""

    generation: int
    policy: Literal["agents", "ga"]
    policy_reason: str
    children: list[str]
    survivors: list[str]
    best_id: str
    best_fitness: float
    # The best member's eval-split accuracy on the hard level.
    best_fitness_hard: float = 0.0
    diversity: float


class Promotion(Record):
    """The registry's verdict on the cycle's challenger."""

    version: str
    promoted: bool
    reasons: list[str]
    previous_champion: str | None = None


class SpecialistMergeReport(Record):
    """The specialists' composition against each of its parents, on the eval split, paired
    on the same problems (`comparisons`: parent -> the merge's difference and its interval)."""

    id: str
    accuracy: float
    parents: dict[str, float]
    rule: str
    weights: list[float]
    beats_each_parent: bool
    split: ScoredSplit = "eval"
    comparisons: dict[str, str] = Field(default_factory=dict)


class CycleSummary(Record):
    """A cycle's outcome as a person reads it: test accuracy of each candidate that matters.

    Written to `mlruns/last-cycle.json` and logged to MLflow; the field names are the JSON
    keys users and scripts read.
    """

    cycle_id: str
    base: float
    base_hard: float
    base_id: str = "base"
    best_initial: float
    best_initial_hard: float
    best_initial_id: str
    generations: list[GenerationResult]
    challenger: float
    challenger_hard: float
    challenger_id: str
    challenger_reason: str
    champion: float
    champion_hard: float
    champion_version: str | None
    promoted: bool
    registry_version: str
    gate_reasons: list[str]
    specialist_merge: SpecialistMergeReport | None = None
    # What this cycle's generalist continued: an earlier night's trunk ("trunk-<cycle id>")
    # or the champion ("champion-v3"); None for a cold start.
    started_from: str | None = None
    # Optimizer steps the trunk kept tonight has behind it, across nights (0: no trunk).
    trunk_steps: int = 0
    resumed: bool
    # How many times this cycle was resumed after a run of it stopped unfinished.
    resumes: int = 0
    # All runs of this cycle (a resumed one included); this run's alone beside it.
    wall_s: float
    wall_s_this_run: float
    # What cross-over and mutation did this cycle: the challenger against the best initial
    # member, on the eval split (selection's problems). The champion may be an older
    # cycle's, if the gate refused.
    evolution_gain: float
    evolution_gain_hard: float
    # Every comparison a person reads, paired on the same problems with its 95% interval:
    # "challenger g0-m0 vs champion v3 (test)" -> "+0.050 [+0.008, +0.092] (15 won, 3 lost of 240)".
    comparisons: dict[str, str] = Field(default_factory=dict)
    test_problems: int = 0
    # The older, smaller frozen test set, still reported for continuity (None: not set up).
    challenger_continuity: float | None = None
    champion_continuity: float | None = None
    # Training steps this cycle ran (members and continued-training mutations).
    train_steps: int = 0
    # Share of the champion's fresh problems one of its sampled attempts solved (None: no
    # self-attempts this cycle), and tonight's mix by source.
    self_yield: float | None = None
    mix_rows: dict[str, int] = Field(default_factory=dict)
    # The champion's test accuracy per level, skill and skill x level ("hard", "units_hard").
    champion_groups: dict[str, float] = Field(default_factory=dict)
