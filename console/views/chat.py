"""Chat with the agent: its tool steps as they happen, the adapter that answered, thumbs up
or down on each answer, the conversation continued as one session."""

from __future__ import annotations

from typing import Any

import streamlit as st

from console.client import ConsoleError
from console.state import guarded, service


def _show_steps(steps: list[dict[str, Any]], container: Any) -> None:
    for step in steps:
        container.markdown(f"**{step['tool']}**(`{step['argument']}`) → `{step['observation']}`"
                           + (f"  \n_{step['thought']}_" if step.get("thought") else ""))


def _send_feedback(run_id: str) -> None:
    choice = st.session_state.get(f"feedback-{run_id}")
    rating = {None: 0, 0: -1, 1: 1}[choice]
    try:
        service().feedback(run_id, rating)
    except ConsoleError as exc:
        st.session_state["chat_error"] = exc.sentence()
    else:
        st.session_state.setdefault("ratings", {})[run_id] = rating


def _show_answer(message: dict[str, Any], with_steps: bool = True) -> None:
    steps = message.get("steps") or []
    if steps and with_steps:
        with st.expander(f"{len(steps)} tool step{'s' * (len(steps) != 1)}"):
            _show_steps(steps, st)
    if message.get("final_answer") is not None:
        st.markdown(message["final_answer"])
    else:
        st.warning(f"The agent gave no answer: {message.get('error')}")
    st.caption(f"answered by `{message['adapter']}`")
    st.feedback("thumbs", key=f"feedback-{message['run_id']}",
                on_change=_send_feedback, args=(message["run_id"],))


def _new_conversation() -> None:
    st.session_state["chat"], st.session_state["session_id"] = [], None


def _ask(question: str) -> None:
    history: list[dict[str, Any]] = st.session_state["chat"]
    history.append({"role": "user", "content": question})
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        status = st.status("The agent is thinking…", expanded=True)
        steps: list[dict[str, Any]] = []
        answer = None
        try:
            events = service().agent_run_events(question, st.session_state.get("session_id"))
            for event in events:
                if event["type"] == "step":
                    steps.append(event)
                    status.update(label=f"Ran {event['tool']}…")
                    _show_steps([event], status)
                elif event["type"] == "answer":
                    answer = event
        except ConsoleError:
            history.pop()  # the question was not answered: it is not part of the session
            status.update(label="No answer", state="error")
            raise
        status.update(label=f"{len(steps)} tool step{'s' * (len(steps) != 1)}",
                      state="complete", expanded=False)
        if answer is None:
            history.pop()
            raise ConsoleError("The service ended the answer early.", "Ask again.")
        # Shown here, under the steps it streamed; later runs draw it from the history.
        _show_answer(answer, with_steps=False)
    st.session_state["session_id"] = answer["session_id"]
    history.append({"role": "assistant", **answer})


def render() -> None:
    st.title("Chat")
    st.session_state.setdefault("chat", [])
    left, right = st.columns([4, 1])
    session_label = left.empty()
    right.button("New conversation", key="new-conversation", on_click=_new_conversation)
    if "chat_error" in st.session_state:
        st.error(st.session_state.pop("chat_error"))
    for message in st.session_state["chat"]:
        with st.chat_message(message["role"]):
            if message["role"] == "user":
                st.markdown(message["content"])
            else:
                _show_answer(message)
    question = st.chat_input("Ask the agent (it remembers what you tell it)", key="question")
    if question and question.strip():
        _ask(question.strip())
    session = st.session_state.get("session_id")  # the answer's, once there is one
    session_label.caption(f"session `{session}`" if session else "a new conversation")


guarded(render)
