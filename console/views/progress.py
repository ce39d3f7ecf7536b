"""Is the agent getting better? The champion's test accuracy after each cycle (overall,
hard vs easy, per skill), the cycle running now, and each cycle's promotion decision."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from console.cycles import (
    NIGHTS_FILE,
    CycleHistory,
    accuracy_rows,
    decision_rows,
    latest_cycle_progress,
    skill_rows,
)
from console.state import guarded, mlflow_client, settings
from evolora.progress import clock_text


def _line_chart(rows: list[dict], color: str, title: str) -> alt.Chart:
    frame = pd.DataFrame(rows)
    return (alt.Chart(frame, title=title).mark_line(point=True)
            .encode(x=alt.X("cycle:O", title="cycle"),
                    y=alt.Y("accuracy:Q", title="test accuracy",
                            scale=alt.Scale(domain=[0, 1])),
                    color=alt.Color(f"{color}:N", title=None),
                    tooltip=["cycle_id", color, alt.Tooltip("accuracy:Q", format=".2f")]))


def _running_cycle(cycles_dir: Path) -> None:
    running = latest_cycle_progress(cycles_dir)
    if running is None:
        return
    snapshot, state = running.snapshot, running.state
    stage = snapshot.get("stage") or {}
    label = stage.get("label") or "between stages"
    if stage.get("units", 1) > 1 or stage.get("unit"):
        label += f" ({stage.get('done')}/{stage.get('units')} {stage.get('unit', '')})".rstrip()
    where = f"stage {snapshot.get('n')} of {snapshot.get('of')}: {label}"
    if state == "running":
        st.subheader(f"Cycle {running.cycle_id} is running")
        st.progress(min(float(snapshot.get("percent", 0.0)) / 100, 1.0),
                    text=f"{snapshot.get('percent', 0.0):.0f}% · {where}")
        st.caption(f"elapsed {clock_text(snapshot.get('elapsed_s', 0))} · "
                   f"~{clock_text(snapshot.get('remaining_s', 0))} left")
    elif state in ("stopped", "failed"):
        st.warning(f"Cycle {running.cycle_id} {state} at {where}. `evolora cycle -c "
                   "<config>` resumes it where it stopped.")


def render() -> None:
    st.title("Progress")
    current = settings()
    _running_cycle(current.paths.data_dir / "cycles")
    history = CycleHistory(mlflow_client(current), current.evolution.registry_model_name,
                           list(current.data.skills))
    records = history.records(current.paths.mlruns_dir / NIGHTS_FILE)
    if not records:
        st.info(f"No finished cycle in {current.paths.resolved_tracking_uri} yet. Run one "
                "with `evolora cycle -c <config>`; its results appear here.")
        return
    last = records[-1]
    before = records[-2] if len(records) > 1 else None
    cols = st.columns(4)
    cols[0].metric("champion", f"v{last.champion_version}" if last.champion_version else "none")
    cols[1].metric("test accuracy", f"{last.champion:.2f}",
                   f"{last.champion - before.champion:+.2f}" if before else None)
    cols[2].metric("hard problems", f"{last.champion_hard:.2f}",
                   f"{last.champion_hard - before.champion_hard:+.2f}" if before else None)
    cols[3].metric("cycles", len(records),
                   f"{sum(r.promoted for r in records)} promoted", delta_color="off")
    st.altair_chart(_line_chart(accuracy_rows(records), "series",
                                "The champion after each cycle"), width="stretch")
    skills = skill_rows(records)
    if skills:
        st.altair_chart(_line_chart(skills, "skill", "Per skill"), width="stretch")
    st.subheader("Decisions")
    st.dataframe(pd.DataFrame(decision_rows(records)), hide_index=True,
                 width="stretch")


guarded(render)
