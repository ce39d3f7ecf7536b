"""Tool calling and plain chat through the OpenAI API, in the ReAct format the model learnt.

Rendering and parsing are checked on exact strings. The service runs for real (uvicorn, the
transformers runtime) on two tiny models driven by the official `openai` client: a scripted
one (tests/support/scripted_model.py) whose greedy output is a known ReAct step, so the
whole tool-calling loop and the agent's plain answers can be checked exactly, and the random
tiny model, whose replies must still be one of the valid shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError
from support.scripted_model import ASSISTANT_START, build_scripted_model
from support.serving import serving_settings

from agent.react_format import SYSTEM_PROMPT, tools_system_prompt
from serving.app import create_app
from serving.local_server import running_server
from serving.schemas import ChatCompletionRequest, ChatMessage, ToolSpec
from serving.tool_calls import (
    FORCED_ANSWER,
    argument_key,
    argument_text,
    call_arguments,
    read_step,
    render_react_chat,
    tools_react_system,
)

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Arithmetic. 12 * (3 + 4)",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_Weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string"}}}}}
QUESTION = [{"role": "user", "content": "What is 12 * 7?"}]

# What the scripted model writes: a calculator step on a fresh question, the answer after an
# observation (the prompt then ends on its newline), the answer after a forced "Final Answer:".
STEP = "Thought: I need to multiply.\nAction: calculator\nAction Input: 12 * 7"
SCRIPT = {ASSISTANT_START: "Thought: I need to multiply.\n",
          "Thought: I need to multiply.\n": "Action: calculator\n",
          "Action: calculator\n": "Action Input: 12 * 7",
          "Action Input: 12 * 7": "\nObservation:",
          "\n": "Thought: I have the answer.\n",
          "Thought: I have the answer.\n": "Final Answer: 84",
          ":": " 84"}


def tools(*specs: dict[str, Any]) -> list[ToolSpec]:
    return [ToolSpec.model_validate(spec) for spec in specs]


def messages(*raw: dict[str, Any]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(message) for message in raw]


# --- rendering and parsing --------------------------------------------------------------------


def test_the_tools_system_prompt_lists_tools_as_the_trained_prompt_does() -> None:
    built_in = [("calculator", ""), ("convert", "km to mi"),
                ("date", "D + N days, days between D and D, weekday D; D=YYYY-MM-DD"),
                ("currency", "USD to EUR")]
    assert tools_system_prompt(built_in) == SYSTEM_PROMPT
    assert tools_react_system(tools(CALCULATOR, WEATHER)).endswith(
        "\nTools: calculator (Arithmetic. 12 * (3 + 4)), get_Weather (The weather in a city).")


def test_a_conversation_with_tool_calls_renders_as_react_text() -> None:
    conversation = messages(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": "I need to multiply.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expression": "12 * 7"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "84"},
        {"role": "assistant", "content": "84"},
        {"role": "user", "content": "And 84 km in miles?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_2", "type": "function",
             "function": {"name": "convert", "arguments": '{"input": "84 km to mi"}'}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "52.2\nmiles"},
    )
    system = tools_react_system(tools(CALCULATOR))
    chat, prefix = render_react_chat(conversation, system)
    assert chat == [
        {"role": "system", "content": system + "\n\nBe brief."},
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": "Thought: I need to multiply.\nAction: calculator\n"
                                         "Action Input: 12 * 7\nObservation: 84\n"
                                         "Thought: I have the answer.\nFinal Answer: 84"},
        {"role": "user", "content": "And 84 km in miles?"},
    ]
    # The turn in progress is the prefix the model continues (newlines flattened).
    assert prefix == ("Thought: \nAction: convert\nAction Input: 84 km to mi\n"
                      "Observation: 52.2 miles\n")


def test_calls_made_side_by_side_pair_with_their_results() -> None:
    conversation = messages(
        {"role": "user", "content": "Two sums."},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "function": {"name": "calculator", "arguments": '{"x": "1 + 1"}'}},
            {"id": "b", "function": {"name": "calculator", "arguments": '{"x": "2 + 2"}'}}]},
        {"role": "tool", "tool_call_id": "b", "content": "4"},
        {"role": "tool", "tool_call_id": "a", "content": "2"},
    )
    _chat, prefix = render_react_chat(conversation, SYSTEM_PROMPT)
    assert prefix == ("Thought: \nAction: calculator\nAction Input: 2 + 2\nObservation: 4\n"
                      "Thought: \nAction: calculator\nAction Input: 1 + 1\nObservation: 2\n")


def test_openai_and_langchain_conversations_render_the_same_prompt(tiny_model_dir: Path
                                                                   ) -> None:
    # The LangChain bridge (agent/chat_model.py) and this one share the rendering.
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    from agent.chat_model import LocalReActChatModel
    from engines.transformers_runtime import ModelRuntime

    runtime = ModelRuntime.load(str(tiny_model_dir), "float32")
    langchain = LocalReActChatModel(runtime=runtime).render_prompt([
        SystemMessage(SYSTEM_PROMPT), HumanMessage("What is 2 + 2?"), AIMessage("4"),
        HumanMessage("And 12 * 7?"),
        AIMessage("Multiply.", tool_calls=[{"name": "calculator", "id": "c1",
                                            "args": {"input": "12 * 7"}}]),
        ToolMessage("84", tool_call_id="c1")])
    chat, prefix = render_react_chat(messages(
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 12 * 7?"},
        {"role": "assistant", "content": "Multiply.", "tool_calls": [
            {"id": "c1", "function": {"name": "calculator",
                                      "arguments": '{"input": "12 * 7"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "84"}), SYSTEM_PROMPT)
    assert langchain == runtime.chat_prompt(chat, assistant_prefix=prefix)
    assert langchain.endswith("Action Input: 12 * 7\nObservation: 84\n")


def test_arguments_map_both_ways() -> None:
    calculator, weather = tools(CALCULATOR, WEATHER)
    no_schema = ToolSpec.model_validate({"type": "function", "function": {"name": "ping"}})
    assert argument_key(calculator) == "expression"
    assert argument_key(weather) == "input" and argument_key(no_schema) == "input"
    assert json.loads(call_arguments(calculator, "12 * 7")) == {"expression": "12 * 7"}
    assert json.loads(call_arguments(weather, "Oslo")) == {"input": "Oslo"}
    assert argument_text('{"expression": "12 * 7"}') == "12 * 7"
    assert argument_text({"expression": "12 * 7"}) == "12 * 7"
    assert argument_text('{"n": 3}') == "3"
    assert argument_text('{"city": "Oslo", "unit": "C"}') == '{"city": "Oslo", "unit": "C"}'
    assert argument_text("12 * 7") == "12 * 7"  # not JSON: the text itself


def test_a_step_reads_as_a_tool_call_an_answer_or_marked_raw_text() -> None:
    offered = tools(CALCULATOR, WEATHER)
    call = read_step(STEP + "\n", offered)
    assert call.finish_reason == "tool_calls" and call.content == "I need to multiply."
    assert call.tool_calls[0].id.startswith("call_") and call.error is None
    assert call.tool_calls[0].function.name == "calculator"
    assert json.loads(str(call.tool_calls[0].function.arguments)) == {"expression": "12 * 7"}
    # The model writes names in any case; the call uses the caller's spelling.
    weather = read_step("Thought: look.\nAction: get_weather\nAction Input: Oslo", offered)
    assert weather.tool_calls[0].function.name == "get_Weather"
    assert json.loads(str(weather.tool_calls[0].function.arguments)) == {"input": "Oslo"}

    answer = read_step("Thought: I have the answer.\nFinal Answer: 84\n\nbabble", offered)
    assert (answer.content, answer.finish_reason, answer.tool_calls) == ("84", "stop", [])
    forced = read_step(" 84", offered, FORCED_ANSWER)
    assert (forced.content, forced.error) == ("84", None)

    garbled = read_step("  I think it is about 80.  ", offered)
    assert garbled.content == "I think it is about 80." and garbled.tool_calls == []
    assert garbled.error == "malformed step: no Action or Final Answer"
    unknown = read_step(STEP, tools(WEATHER))
    assert unknown.content == STEP and unknown.tool_calls == []
    assert unknown.finish_reason == "stop"
    assert unknown.error is not None and "unknown tool 'calculator'" in unknown.error


def test_requests_with_tools_are_validated() -> None:
    with pytest.raises(ValidationError) as bad_type:
        ChatCompletionRequest.model_validate({"messages": QUESTION, "tools": [
            {"type": "retrieval", "function": {"name": "x"}}]})
    assert bad_type.value.errors()[0]["loc"][:3] == ("tools", 0, "type")
    with pytest.raises(ValidationError, match="calculator appears more than once"):
        ChatCompletionRequest.model_validate({"messages": QUESTION, "tools": [
            CALCULATOR, {"type": "function", "function": {"name": "Calculator"}}]})


# --- the service on the scripted model --------------------------------------------------------


@dataclass
class Scripted:
    url: str
    model_dir: Path


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    model_dir = build_scripted_model(tmp_path_factory.mktemp("scripted-model"), SCRIPT)
    settings = serving_settings(tmp_path_factory.mktemp("scripted"), model_dir,
                                engine="transformers", poll_interval_s=3600)
    with running_server(create_app(settings)) as url:
        yield Scripted(url, model_dir)


@pytest.fixture(scope="module")
def scripted(scripted_server: Scripted) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{scripted_server.url}/v1", api_key="local", max_retries=0)


def expected_prompt_tokens(model_dir: Path, conversation: list[dict[str, Any]],
                           offered: list[dict[str, Any]]) -> int:
    """The token count of the prompt the pure rendering gives for `conversation`."""
    from transformers import AutoTokenizer

    chat, prefix = render_react_chat(messages(*conversation),
                                     tools_react_system(tools(*offered)))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(prompt + prefix, add_special_tokens=False)["input_ids"])


@pytest.mark.server
def test_the_tool_calling_loop_with_the_openai_client(scripted: openai.OpenAI,
                                                      scripted_server: Scripted) -> None:
    first = scripted.chat.completions.create(model="champion", messages=QUESTION,
                                             tools=[CALCULATOR, WEATHER], max_tokens=16)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I need to multiply."
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "12 * 7"}
    assert first.model_extra["evolora_error"] is None

    # The caller runs the tool and sends its result; the model answers from it.
    conversation = [*QUESTION, choice.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "84"}]
    second = scripted.chat.completions.create(model="champion", messages=conversation,
                                              tools=[CALCULATOR, WEATHER], max_tokens=16)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "84"
    assert second.choices[0].message.tool_calls is None
    # The engine was given exactly the rendered ReAct prompt: its token count matches.
    assert second.usage is not None
    assert second.usage.prompt_tokens == expected_prompt_tokens(
        scripted_server.model_dir, conversation, [CALCULATOR, WEATHER])


@pytest.mark.server
def test_a_streamed_tool_call_parses_in_the_openai_client(scripted: openai.OpenAI) -> None:
    chunks = list(scripted.chat.completions.create(
        model="champion", messages=QUESTION, tools=[CALCULATOR], max_tokens=16, stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert [(c.index, c.function.name) for c in calls] == [(0, "calculator")]
    assert json.loads(calls[0].function.arguments) == {"expression": "12 * 7"}
    assert "".join(d.content or "" for d in deltas) == "I need to multiply."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    # The client's own accumulator builds the same message from the chunks.
    with scripted.chat.completions.stream(model="champion", messages=QUESTION,
                                          tools=[CALCULATOR], max_tokens=16) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "calculator"


@pytest.mark.server
def test_a_tool_not_offered_and_tool_choice_none_never_become_calls(
        scripted: openai.OpenAI) -> None:
    unknown = scripted.chat.completions.create(model="champion", messages=QUESTION,
                                               tools=[WEATHER], max_tokens=16)
    assert unknown.choices[0].message.tool_calls is None
    assert unknown.choices[0].message.content == STEP
    assert "unknown tool 'calculator'" in unknown.model_extra["evolora_error"]

    answered = scripted.chat.completions.create(model="champion", messages=QUESTION,
                                                tools=[CALCULATOR], tool_choice="none",
                                                max_tokens=16)
    assert answered.choices[0].message.content == "84"
    assert answered.choices[0].message.tool_calls is None


@pytest.mark.server
def test_tool_choice_and_tool_types_we_cannot_honour_are_refused(
        scripted: openai.OpenAI, scripted_server: Scripted) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "calculator"}}):
        with pytest.raises(openai.BadRequestError, match="tool_choice"):
            scripted.chat.completions.create(model="champion", messages=QUESTION,
                                             tools=[CALCULATOR], tool_choice=choice)
    bad = httpx.post(f"{scripted_server.url}/v1/chat/completions", timeout=60, json={
        "messages": QUESTION, "tools": [{"type": "retrieval", "function": {"name": "x"}}]})
    assert bad.status_code == 422
    assert any(e["loc"][1:4] == ["tools", 0, "type"] for e in bad.json()["detail"])


@pytest.mark.server
def test_plain_chat_runs_the_agent_on_its_own_tools(scripted: openai.OpenAI) -> None:
    reply = scripted.chat.completions.create(model="champion", messages=QUESTION,
                                             max_tokens=16)
    content = reply.choices[0].message.content
    assert content == "84" and reply.choices[0].finish_reason == "stop"
    assert "Action:" not in content and "Thought:" not in content
    # The calculator really ran: its observation is in the steps.
    assert reply.model_extra["evolora_steps"] == [
        {"thought": "I need to multiply.", "tool": "calculator", "argument": "12 * 7",
         "observation": "84"}]
    assert reply.model_extra["evolora_adapter"] == "base"  # no champion registered
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    chunks = list(scripted.chat.completions.create(model="evolora", messages=QUESTION,
                                                   max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "84"
    assert chunks[-1].model_extra["evolora_steps"] == reply.model_extra["evolora_steps"]

    # `base` stays a plain completion: the model's raw text, no agent; with tools it calls.
    plain = scripted.chat.completions.create(model="base", messages=QUESTION, max_tokens=16)
    assert plain.choices[0].message.content.startswith(STEP)
    assert plain.model_extra["evolora_steps"] is None
    with_tools = scripted.chat.completions.create(model="base", messages=QUESTION,
                                                  tools=[CALCULATOR], max_tokens=16)
    assert with_tools.choices[0].message.tool_calls[0].function.name == "calculator"


# --- the service on the random tiny model -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
         ) -> Iterator[openai.OpenAI]:
    # The default engine, llama.cpp, on the tiny model's GGUF.
    settings = serving_settings(tmp_path_factory.mktemp("tiny-tools"), tiny_model_dir,
                                poll_interval_s=3600)
    with running_server(create_app(settings)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)


@pytest.mark.server
def test_a_random_model_still_answers_in_a_valid_shape(tiny: openai.OpenAI) -> None:
    reply = tiny.chat.completions.create(model="champion", messages=QUESTION,
                                         tools=[CALCULATOR, WEATHER], max_tokens=12)
    choice = reply.choices[0]
    if choice.finish_reason == "tool_calls":
        call = choice.message.tool_calls[0]
        assert call.function.name in ("calculator", "get_Weather")
        assert isinstance(json.loads(call.function.arguments), dict)
    else:
        assert choice.message.tool_calls is None and isinstance(choice.message.content, str)
        assert choice.finish_reason == "stop"
    streamed = list(tiny.chat.completions.create(model="champion", messages=QUESTION,
                                                 tools=[CALCULATOR], max_tokens=12,
                                                 stream=True))
    assert streamed[-1].choices[0].finish_reason in ("stop", "tool_calls")

    plain = tiny.chat.completions.create(model="champion", messages=QUESTION, max_tokens=12)
    steps = plain.model_extra["evolora_steps"]
    assert isinstance(steps, list) and isinstance(plain.choices[0].message.content, str)
    if plain.model_extra["evolora_error"] is None:  # a final answer: no ReAct scaffolding
        assert "Action:" not in plain.choices[0].message.content


@pytest.mark.server
def test_evolora_raw_is_the_adapters_plain_completion(tiny: openai.OpenAI) -> None:
    raw = tiny.chat.completions.create(model="champion", messages=QUESTION, max_tokens=12,
                                       extra_body={"evolora_raw": True})
    base = tiny.chat.completions.create(model="base", messages=QUESTION, max_tokens=12)
    # No champion is registered, so the champion is the base model: the same plain text,
    # and no agent ran.
    assert raw.choices[0].message.content == base.choices[0].message.content
    assert raw.model_extra["evolora_steps"] is None
    assert raw.usage.completion_tokens == base.usage.completion_tokens
