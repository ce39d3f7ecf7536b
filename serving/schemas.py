"""Request and response bodies of the service's routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evolora.vocabulary import CHAMPION

# --- OpenAI-compatible chat -------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "text"
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    # A JSON object as text (OpenAI's form); an object itself is accepted from lenient clients.
    arguments: str | dict[str, Any] = ""


class ToolCall(BaseModel):
    """A tool call in an assistant message: ours in a reply, the caller's in a request."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")  # strict ...: accepted, unused

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    """A tool the caller offers: OpenAI's function tool (the only type we can call)."""

    type: Literal["function"]
    function: FunctionSpec


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name ...: accepted, unused

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # OpenAI clients send fields we do not use (n, logprobs, user, ...): accepted, ignored.
    model_config = ConfigDict(extra="allow")

    model: str = Field(CHAMPION, description="evolora | champion | base | v<N>")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0, le=4096)
    max_completion_tokens: int | None = Field(None, gt=0, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    evolora_raw: bool = Field(False, description="true: the adapter's plain completion of the "
                              "chat template (no agent, live stream); ignored with tools")

    @field_validator("tools")
    @classmethod
    def _distinct_tool_names(cls, tools: list[ToolSpec] | None) -> list[ToolSpec] | None:
        # The model writes tool names in any case (the parser lowercases them): names that
        # differ only in case could not be told apart.
        names = [tool.function.name.lower() for tool in tools or []]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"tool names must differ (ignoring case): {', '.join(repeated)} "
                             "appears more than once")
        return tools

    def stop_list(self) -> list[str]:
        """The stop sequences, empty ones left out (serving/checks.py caps count and length)."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: Literal["stop", "length", "tool_calls"]


class AgentStepOut(BaseModel):
    thought: str
    tool: str
    argument: str
    observation: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    evolora_adapter: str = Field(description="The adapter that generated the reply.")
    evolora_steps: list[AgentStepOut] | None = Field(
        None, description="The built-in tools the agent ran for this answer (no `tools` sent).")
    evolora_error: str | None = Field(
        None, description="Why the model's ReAct text could not be read as an answer or a "
                          "tool call; the raw text is the content then.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "evolora"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- agent runs, memories, feedback -----------------------------------------------------------


class AgentRunRequest(BaseModel):
    question: str = Field(min_length=1, pattern=r"\S")
    session_id: str | None = Field(None, min_length=1, max_length=128)
    stream: bool = Field(False, description="true: server-sent events, one per tool step as "
                         "it happens, then the answer")


class AgentRunResponse(BaseModel):
    run_id: str
    session_id: str
    final_answer: str | None
    steps: list[AgentStepOut]
    error: str | None
    adapter: str


class MemoryOut(BaseModel):
    id: str
    text: str
    kind: str | None = None
    importance: float | None = None
    created_at: Any = None
    metadata: dict[str, Any] | None = None
    score: float | None = None


class MemoryList(BaseModel):
    data: list[MemoryOut]


class FeedbackRequest(BaseModel):
    run_id: str = Field(min_length=1, max_length=128)
    rating: Literal[-1, 0, 1]
    comment: str | None = Field(None, max_length=2000)


class FeedbackResponse(BaseModel):
    run_id: str
    rating: int
    recorded: bool = True


# --- admin --------------------------------------------------------------------------------------


class PromoteRequest(BaseModel):
    version: str = Field(pattern=r"^[1-9][0-9]{0,8}$", description="A registered version number")
    force: bool = Field(False, description="Skip the quality gate (never the checksum check)")


# --- what the service holds of a user ---------------------------------------------------------


class UserData(BaseModel):
    """Counts of what is stored of one user's history (API keys are not history)."""

    memories: int
    sessions: int
    messages: int
    runs: int = Field(description="Agent runs: their traces and feedback (training data).")


class UserDataResponse(BaseModel):
    user_id: str
    stored: UserData


class ForgetResponse(BaseModel):
    user_id: str
    deleted: UserData
