"""The registry side by side: every version, per-skill accuracy, the champion's genealogy;
promote a version or roll back (with an admin key, after a confirmation)."""

from __future__ import annotations

import os
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from console.adapters import genealogy_dot, skill_accuracy_rows, version_rows
from console.client import ConsoleError
from console.state import ADMIN_KEY_ENV, guarded, mlflow_client, service, settings


def _bars(rows: list[dict[str, Any]], title: str) -> alt.Chart:
    return (alt.Chart(pd.DataFrame(rows), title=title).mark_bar()
            .encode(x=alt.X("name:N", title=None),
                    xOffset="version:N",
                    y=alt.Y("accuracy:Q", title="test accuracy", scale=alt.Scale(domain=[0, 1])),
                    color=alt.Color("version:N"),
                    tooltip=["version", "name", alt.Tooltip("accuracy:Q", format=".2f")]))


def _apply(action: str, version: str | None, force: bool) -> None:
    """The confirmed action, sent with the admin key (or the sidebar's key)."""
    st.session_state.pop("pending", None)
    admin_key = str(st.session_state.get("admin_key") or "").strip() or None
    try:
        if action == "promote" and version is not None:
            result = service().promote(version, admin_key, force=force)
            verdict = "promoted" if result["promote"] else "refused by the gate"
            kind = "success" if result["promote"] else "warning"
            message = f"v{version} {verdict}: {'; '.join(result['reasons'])}"
        else:
            result = service().rollback(admin_key)
            kind = "success"
            message = (f"The champion is v{result['champion']} again (was "
                       f"v{result['rolled_back_from']}).")
    except ConsoleError as exc:
        kind, message = "error", exc.sentence()
    st.session_state["admin_result"] = (kind, message)


def _ask(action: str) -> None:
    # Asked now: the version and force widgets are not drawn while the question stands.
    version = st.session_state.get("promote-version") if action == "promote" else None
    st.session_state["pending"] = (action, version, bool(st.session_state.get("force")))


def _cancel() -> None:
    st.session_state.pop("pending", None)


def _admin(versions: list[str]) -> None:
    st.subheader("Promote or roll back")
    st.session_state.setdefault("admin_key", os.environ.get(ADMIN_KEY_ENV, ""))
    st.text_input("Admin key", key="admin_key", type="password",
                  help="`evolora keys create NAME --admin`; empty: the sidebar's key.")
    if "admin_result" in st.session_state:
        kind, message = st.session_state.pop("admin_result")
        getattr(st, kind)(message)
    pending = st.session_state.get("pending")
    if pending:
        action, version, force = pending
        what = (f"promote v{version}{' (gate skipped)' * force}" if action == "promote"
                else "roll back to the previous champion")
        st.warning(f"Really {what}? The service starts serving it at once.")
        yes, no = st.columns(2)
        yes.button(f"Yes, {what}", key="confirm-admin", type="primary", on_click=_apply,
                   args=pending)
        no.button("Cancel", key="cancel-admin", on_click=_cancel)
        return
    left, middle, right = st.columns([2, 1, 1])
    left.selectbox("Version", versions, key="promote-version", format_func=lambda v: f"v{v}")
    st.checkbox("Skip the quality gate (force)", key="force",
                help="The checksums are checked always.")
    middle.button("Promote…", key="promote", on_click=_ask, args=("promote",))
    right.button("Roll back…", key="rollback", on_click=_ask, args=("rollback",))


def render() -> None:
    st.title("Adapters")
    current = settings()
    client, name = mlflow_client(current), current.evolution.registry_model_name
    rows = version_rows(client, name)
    if not rows:
        st.info(f"No adapter is registered as {name} yet: `evolora cycle -c <config>` "
                "registers its best candidate.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"test accuracy": st.column_config.NumberColumn(format="%.2f")})
    accuracy = skill_accuracy_rows(client, name, list(current.data.skills))
    skills = [r for r in accuracy if r["group"] == "skill"]
    levels = [r for r in accuracy if r["group"] == "level"]
    left, right = st.columns([3, 1])
    if skills:
        left.altair_chart(_bars(skills, "Per skill"), width="stretch")
    if levels:
        right.altair_chart(_bars(levels, "Easy vs hard"), width="stretch")
    st.subheader("The champion's genealogy")
    dot = genealogy_dot(client, name, cycles_dir=current.paths.data_dir / "cycles")
    if dot:
        st.graphviz_chart(dot, width="stretch")
    else:
        st.caption("No champion yet.")
    _admin([row["version"].removeprefix("v") for row in rows])


guarded(render)
