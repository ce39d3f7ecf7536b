"""A real world for the web console's tests: the service on a scripted tiny model (so the
agent's answer is known), a registry with three versions from three cycles (two promoted,
one refused by the real gate), their cycle runs and journals, a running cycle's progress
file, and a user with memories.

Everything is made the way the project makes it: adapters are real PEFT folders registered
with `register_candidate`, the gate is `promote_if_better`, the summaries are CycleSummary
records logged by the cycle's own `log_cycle_summary`, the journals are CycleJournals and
the progress file is written by a real `Progress`. Only the numbers are chosen (a tiny
model cannot earn them), so the tests can say which ones each chart must show.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from evolora.progress import PROGRESS_FILE, Progress, Stage
from evolora.settings import Settings
from evolora.vocabulary import CYCLE_TAG, STEP_TAG
from flows.cycle import log_cycle_summary
from flows.cycle_journal import CycleJournal
from serving.app import create_app
from serving.local_server import running_server
from storage.store import Store
from support.scripted_model import ASSISTANT_START, build_scripted_model
from support.serving import make_empty_db, prepare_registry, serving_settings
from tasks.records import ChildRecipe, CycleSummary, InitialRecipe, Member
from tasks.registry import Candidate, promote_if_better, register_candidate

QUESTION = "What is 12 * 7?"
ANSWER = "84"
# What the scripted model writes to any fresh question: one calculator step, then 84.
SCRIPT = {ASSISTANT_START: "Thought: I need to multiply.\n",
          "Thought: I need to multiply.\n": "Action: calculator\n",
          "Action: calculator\n": "Action Input: 12 * 7",
          "Action Input: 12 * 7": "\nObservation:",
          "\n": "Thought: I have the answer.\n",
          "Thought: I have the answer.\n": f"Final Answer: {ANSWER}"}

SKILLS = ["arithmetic", "units", "dates", "percent", "compound", "currency"]
# Per version: overall, easy, hard, then each skill in SKILLS order.
SCORES = {
    "1": (0.25, 0.40, 0.10, (0.50, 0.25, 0.00, 0.25, 0.00, 0.50)),
    "2": (0.50, 0.70, 0.30, (0.75, 0.50, 0.25, 0.50, 0.25, 0.75)),
    # Better overall than v2 but dates fell 0.25 -> 0.00: the gate refuses it.
    "3": (0.55, 0.80, 0.30, (1.00, 0.75, 0.00, 0.50, 0.25, 1.00)),
}
MEMORIES = ["I prefer green tea in the morning.", "My sister lives in Lisbon.",
            "Remember that my flight is on 2027-03-14."]


def version_metrics(version: str) -> dict[str, float]:
    overall, easy, hard, per_skill = SCORES[version]
    metrics = {"test_accuracy": overall, "test_accuracy_easy": easy,
               "test_accuracy_hard": hard, "test_problems": 60.0}
    for skill, value in zip(SKILLS, per_skill, strict=True):
        metrics[f"test_accuracy_{skill}"] = value
        metrics[f"test_accuracy_{skill}_hard"] = value / 2
    return metrics


@dataclass
class ConsoleWorld:
    url: str
    settings: Settings
    store: Store
    client: MlflowClient
    user_key: str
    admin_key: str
    cycle_ids: list[str] = field(default_factory=list)
    running_cycle: str = ""
    env: dict[str, str] = field(default_factory=dict)


def _zero_adapter(model_dir: Path, out_dir: Path) -> Path:
    """A real LoRA adapter of the scripted model that changes nothing (B = 0, PEFT's own
    initialisation): the champion's answers stay the script's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tasks.train.trainer import write_adapter_manifest

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4,
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(str(out_dir))
    write_adapter_manifest(out_dir, {"name": out_dir.name})
    return out_dir


def _members(cycle: int, adapters: Path) -> dict[str, Member]:
    """A cycle's population as its journal keeps it: a generalist (continuing the last
    champion from the second cycle on), two specialists continuing it, their merge."""
    def initial(member_id: str, role: str, skills: list[str], init_from: str | None) -> Member:
        return Member(id=member_id, adapter_dir=adapters / member_id, rank=2, generation=0,
                      recipe=InitialRecipe(role=role, skills=skills, seed=0, steps=4,
                                           init_from=init_from))

    champion = f"champion-v{cycle - 1}" if cycle > 1 else None
    members = {m.id: m for m in (
        initial("g0-m0", "generalist", SKILLS, champion),
        initial("g0-m1", "specialist", ["dates", "percent"], "g0-m0"),
        initial("g0-m2", "specialist", ["units", "currency"], "g0-m0"))}
    members["g1-c0"] = Member(id="g1-c0", adapter_dir=adapters / "g1-c0", rank=2,
                              generation=1, parents=["g0-m1", "g0-m2"],
                              recipe=ChildRecipe(combination_type="linear", weights=[0.5, 0.5],
                                                 start="g0-m0"),
                              merge_rule="mean (all continued g0-m0)")
    return members


def _run_cycle(world: ConsoleWorld, model_dir: Path, cycles_dir: Path, cycle: int) -> None:
    """One cycle's records: its journal, parent run, registered challenger, gate, summary."""
    journal = CycleJournal.open(cycles_dir, new=True)
    members = _members(cycle, journal.adapters_dir)
    challenger = members["g0-m0"] if cycle == 1 else members["g1-c0"]
    version = str(cycle)
    metrics = version_metrics(version)
    with mlflow.start_run(run_name=f"cycle-{journal.cycle_id}",
                          tags={STEP_TAG: "cycle", CYCLE_TAG: journal.cycle_id}) as parent:
        with mlflow.start_run(run_name=f"train-{challenger.id}", nested=True) as run:
            adapter = _zero_adapter(model_dir, challenger.adapter_dir)
            mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        registered = register_candidate(world.client, Candidate(
            challenger.id, adapter, run.info.run_id, metrics,
            {"member": challenger.id, "parents": challenger.parents,
             "recipe": challenger.recipe.to_json(), "generation": challenger.generation,
             "cycle_parent_run_id": parent.info.run_id}))
        assert str(registered.version) == version
        decision = promote_if_better(world.client, "evolora-adapter", version, margin=0.0,
                                     tolerance=0.1)
        champion = version if decision.promote else str(cycle - 1)
        champ = version_metrics(champion)
        summary = CycleSummary(
            cycle_id=journal.cycle_id, base=0.0, base_hard=0.0, best_initial=0.2,
            best_initial_hard=0.05, best_initial_id="g0-m0", generations=[],
            challenger=metrics["test_accuracy"], challenger_hard=metrics["test_accuracy_hard"],
            challenger_id=challenger.id, challenger_reason=f"{challenger.id}: the fittest",
            champion=champ["test_accuracy"], champion_hard=champ["test_accuracy_hard"],
            champion_version=champion, promoted=decision.promote, registry_version=version,
            gate_reasons=decision.reasons, resumed=False, wall_s=600.0 * cycle,
            wall_s_this_run=600.0 * cycle, evolution_gain=0.0, evolution_gain_hard=0.0)
        log_cycle_summary(summary)
    journal.update(parent_run_id=parent.info.run_id, members=members, status="done",
                   summary=summary)
    world.cycle_ids.append(journal.cycle_id)


def _running_cycle(cycles_dir: Path) -> str:
    """A cycle under way in this process: its progress file, kept by a real Progress."""
    journal = CycleJournal.open(cycles_dir, new=True)
    now = [0.0]  # a clock moved by hand: 4 training steps of 9 s each
    progress = Progress(clock=lambda: now[0])
    progress.plan([Stage("data", "generate data", 1, "data"),
                   Stage("train/g0-m0", "train g0-m0 (generalist)", 10, "train_step")])
    progress.mirror_to(journal.folder / PROGRESS_FILE)
    progress.start("data")
    now[0] += 150.0
    progress.finish("data")
    progress.start("train/g0-m0")
    now[0] += 36.0
    progress.advance(4)
    return journal.cycle_id


@contextmanager
def console_world(root: Path) -> Iterator[ConsoleWorld]:
    """The service running on 127.0.0.1 over the world above, and the console's environment
    (set for the block: the console reads its config and key from it)."""
    from agent.embeddings import load_embedder
    from agent.memory import MemoryStore

    model_dir = build_scripted_model(root / "scripted-model", SCRIPT)
    settings = serving_settings(root / "world", model_dir, engine="transformers",
                                auth_enabled=True, poll_interval_s=3600)
    client = prepare_registry(settings, make_empty_db(root))
    store = Store.from_settings(settings)
    user_key, _ = store.create_key("console-ann", "ann")
    admin_key, _ = store.create_key("console-root", "root", admin=True)
    world = ConsoleWorld("", settings, store, client, user_key, admin_key)
    cycles_dir = settings.paths.data_dir / "cycles"
    for cycle in (1, 2, 3):
        _run_cycle(world, model_dir, cycles_dir, cycle)
        time.sleep(1.05)  # cycle ids are start times to the second
    world.running_cycle = _running_cycle(cycles_dir)
    memory = MemoryStore(settings.memory, settings.paths.data_dir, embedder=load_embedder())
    for text in MEMORIES:
        memory.add("ann", text, kind="fact")
    memory.add("someone-else", "Not Ann's memory: the code is 4321.", kind="fact")
    world.env = {"EVOLORA_CONFIG": "tiny", "EVOLORA_MODEL__BASE": str(model_dir),
                 "EVOLORA_PATHS__DATA_DIR": str(settings.paths.data_dir),
                 "EVOLORA_PATHS__MLRUNS_DIR": str(settings.paths.mlruns_dir),
                 "EVOLORA_API_KEY": user_key, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved = {name: os.environ.get(name) for name in world.env}
    with running_server(create_app(settings)) as url:
        world.url = url
        world.env["EVOLORA_CONSOLE_SERVICE_URL"] = url
        saved["EVOLORA_CONSOLE_SERVICE_URL"] = os.environ.get("EVOLORA_CONSOLE_SERVICE_URL")
        os.environ.update(world.env)
        try:
            yield world
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
