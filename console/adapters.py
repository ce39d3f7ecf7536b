"""The registry's versions as the adapters page draws them: a table, per-skill accuracy side
by side, and the champion's genealogy as a graph (DOT, drawn in the browser)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import graphviz
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from console.cycles import split_accuracies
from evolora.vocabulary import CHAMPION, CYCLE_TAG
from flows.cycle_journal import STATE_FILE, CycleJournal
from tasks.registry import RegistryError, describe_version, get_version, list_versions

# A member that continued a registered champion is named after it (flows/cycle_tasks.py).
_CHAMPION_MEMBER = re.compile(r"^champion-v(\d+)$")
# Versions drawn behind the champion: enough to read a family, few enough to stay legible.
MAX_ANCESTORS = 6


def version_rows(client: MlflowClient, model_name: str) -> list[dict[str, Any]]:
    """Every version, newest first: aliases, test accuracy, member, generation, gate."""
    rows = []
    for row in list_versions(client, model_name):
        genealogy = row["genealogy"]
        rows.append({"version": f"v{row['version']}", "aliases": ", ".join(row["aliases"]),
                     "test accuracy": row["test_accuracy"], "member": genealogy.get("member"),
                     "generation": genealogy.get("generation"),
                     "parents": ", ".join(genealogy.get("parents") or []),
                     "merge": genealogy.get("combination_type") or "",
                     "gate": row["gate"] or "", "created": row["created"]})
    return rows


def skill_accuracy_rows(client: MlflowClient, model_name: str, skills: list[str]
                        ) -> list[dict[str, Any]]:
    """Long-form chart rows: one per version and skill (and level), from the versions' tags."""
    rows = []
    for row in list_versions(client, model_name):
        metrics = describe_version(get_version(client, model_name, row["version"]))["metrics"]
        levels, per_skill = split_accuracies(metrics, skills)
        for group, values in (("skill", per_skill), ("level", levels)):
            rows += [{"version": f"v{row['version']}", "group": group, "name": name,
                      "accuracy": value} for name, value in sorted(values.items())]
    return rows


def _recipe_text(recipe: dict[str, Any]) -> str:
    if recipe.get("kind") == "child":
        weights = "/".join(f"{w:g}" for w in recipe.get("weights") or [])
        text = f"{recipe.get('combination_type')} {weights}".strip()
        mutation = recipe.get("mutation") or {}
        kind = mutation.get("kind", "none")
        detail = {"noise": f" {mutation.get('strength', 0):g}",
                  "rank": f" to r{mutation.get('rank')}",
                  "finetune": f" {mutation.get('steps')} steps"}.get(kind, "")
        return text + (f", mutation {kind}{detail}" if kind != "none" else "")
    if recipe.get("kind") == "initial":
        skills = ", ".join(recipe.get("skills") or [])
        return f"{recipe.get('role')} on {skills}, {recipe.get('steps')} steps"
    return ""


def genealogy_dot(client: MlflowClient, model_name: str, ref: str = CHAMPION,
                  cycles_dir: Path | None = None) -> str:
    """The DOT source of `ref`'s family: each version with its member, generation and score,
    its parents with the merge recipe on the edges, the members they continued (from the
    cycle's journal under `cycles_dir`, when it is there) and the champions those continued,
    drawn in turn (up to MAX_ANCESTORS versions). Empty when there is no such version."""
    try:
        root = get_version(client, model_name, ref)
    except (RegistryError, MlflowException):
        return ""
    family = _Family(client, cycles_dir)
    todo, drawn = [str(root.version)], set()
    while todo and len(drawn) < MAX_ANCESTORS:
        version = todo.pop(0)
        if version in drawn:
            continue
        drawn.add(version)
        try:
            described = describe_version(get_version(client, model_name, version))
        except (RegistryError, MlflowException):
            family.graph.node(f"v{version}", f"v{version} (gone)", shape="box", style="dashed")
            continue
        todo += family.draw_version(described)
    return family.graph.source


class _Family:
    """The graph being drawn, the edges already in it, the versions still to draw."""

    def __init__(self, client: MlflowClient, cycles_dir: Path | None) -> None:
        self.client = client
        self.cycles_dir = cycles_dir
        self.graph = graphviz.Digraph(
            "genealogy", graph_attr={"rankdir": "LR", "fontname": "Helvetica"},
            node_attr={"fontname": "Helvetica", "fontsize": "11"},
            edge_attr={"fontname": "Helvetica", "fontsize": "9"})
        self.edges: set[tuple[str, str]] = set()
        self.continued: list[str] = []

    def draw_version(self, described: dict[str, Any]) -> list[str]:
        """One version's node and its family; returns the versions it continued."""
        self.continued = []
        genealogy = described["genealogy"]
        node = f"v{described['version']}"
        recipe = genealogy.get("recipe") if isinstance(genealogy.get("recipe"), dict) else {}
        accuracy = described["metrics"].get("test_accuracy")
        lines = [f"{node}  {', '.join(described['aliases'])}".strip(),
                 f"{genealogy.get('member', '?')} · generation "
                 f"{genealogy.get('generation', '?')}"]
        if accuracy is not None:
            lines.append(f"test accuracy {accuracy:.2f}")
        if recipe.get("kind") == "initial":
            lines.append(_recipe_text(recipe))
        champion = CHAMPION in described["aliases"]
        self.graph.node(node, "\n".join(lines), shape="box", style="rounded,filled",
                        fillcolor="#f9d976" if champion else "#dbe9f6")
        journal = self._journal(genealogy.get("cycle_parent_run_id"))
        prefix = journal.cycle_id if journal else node
        self._family_of(node, prefix, list(genealogy.get("parents") or []), recipe, journal, 0)
        return self.continued

    def _family_of(self, node: str, prefix: str, parents: list[str], recipe: dict[str, Any],
                   journal: CycleJournal | None, depth: int) -> None:
        merge = _recipe_text(recipe) if recipe.get("kind") == "child" else ""
        for parent in parents:
            self._member(parent, node, prefix, merge, "solid", journal, depth)
        for start in (recipe.get("start"), recipe.get("init_from")):
            if start and start not in parents:
                self._member(start, node, prefix, "continued", "dashed", journal, depth)

    def _member(self, member_id: str, target: str, prefix: str, label: str, style: str,
                journal: CycleJournal | None, depth: int) -> None:
        match = _CHAMPION_MEMBER.match(member_id)
        source = f"v{match.group(1)}" if match else f"{prefix}/{member_id}"
        if (source, target) in self.edges:
            return
        self.edges.add((source, target))
        self.graph.edge(source, target, label=label, style=style)
        if match:  # a registered champion it continued: drawn as its version
            self.continued.append(match.group(1))
            return
        member = journal.members.get(member_id) if journal else None
        if member is None:
            self.graph.node(source, member_id, shape="ellipse")
            return
        recipe = member.recipe.to_json()
        self.graph.node(source, f"{member_id} · generation {member.generation}\n"
                        f"{_recipe_text(recipe)}", shape="ellipse")
        if depth < 8:  # a cycle's family is a few generations deep
            self._family_of(source, prefix, list(member.parents), recipe, journal, depth + 1)

    def _journal(self, run_id: str | None) -> CycleJournal | None:
        """The journal of the cycle whose parent run is `run_id`, if it is on this disk."""
        if not (self.cycles_dir and run_id):
            return None
        try:
            cycle_id = self.client.get_run(run_id).data.tags.get(CYCLE_TAG)
        except MlflowException:
            return None
        folder = self.cycles_dir / str(cycle_id)
        if not cycle_id or not (folder / STATE_FILE).is_file():
            return None
        try:
            return CycleJournal.load(folder)
        except ValueError:
            return None
