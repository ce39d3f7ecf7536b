"""What the agent remembers about you: your own memories, searchable and deletable, with
their importance and age."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from console.client import ConsoleError
from console.memories import memory_rows
from console.state import guarded, service


def _delete(memory_id: str) -> None:
    try:
        service().delete_memory(memory_id)
    except ConsoleError as exc:
        st.session_state["memory_result"] = ("error", exc.sentence())
    else:
        st.session_state["memory_result"] = ("success", "Forgotten.")
    st.session_state.pop("confirm-forget", None)


def render() -> None:
    st.title("Memory")
    query = st.text_input("Search", key="memory-query",
                          placeholder="what does it remember about …").strip()
    client = service()
    memories = client.search_memories(query) if query else client.memories()
    if "memory_result" in st.session_state:
        kind, message = st.session_state.pop("memory_result")
        getattr(st, kind)(message)
    if not memories:
        st.info("No memories match." if query else "The agent remembers nothing about you "
                "yet: what you tell it in the chat is remembered.")
        return
    rows = memory_rows(memories, time.time())
    st.caption(f"{len(rows)} memor{'y' if len(rows) == 1 else 'ies'}"
               + (" nearest in meaning, best first" if query else ", newest first"))
    st.dataframe(pd.DataFrame(rows).drop(columns=[] if query else ["score"]),
                 hide_index=True, width="stretch", column_order=None, column_config={
                     "importance": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                   format="%.2f"),
                     "recency": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                format="%.2f"),
                     "created": st.column_config.DatetimeColumn(format="distance"),
                     "id": None})
    by_id = {row["id"]: row for row in rows}
    choice = st.selectbox("Forget a memory", list(by_id), index=None, key="forget",
                          format_func=lambda i: by_id[i]["text"][:80])
    if choice is None:
        return
    if st.session_state.get("confirm-forget") != choice:
        st.button("Forget…", key="forget-ask", on_click=st.session_state.__setitem__,
                  args=("confirm-forget", choice))
        return
    st.warning(f"Forget \u201c{by_id[choice]['text'][:80]}\u201d for good?")
    st.button("Yes, forget it", key="forget-yes", type="primary", on_click=_delete,
              args=(choice,))


guarded(render)
