"""Checks a request must pass before it costs any generation, each a 400 naming the limit
(and the setting that sets it) it broke.

The cheap ones run first, on the request as sent: message count, stop sequences,
`max_tokens`, prompt characters. The token count of the rendered prompt (chat template,
tools and ReAct text applied) is checked once the prompt exists.
"""

from __future__ import annotations

from fastapi import HTTPException, status

from evolora.settings import Settings
from serving.schemas import ChatCompletionRequest
from serving.tool_calls import request_chars

# OpenAI's own caps on `stop`: a client written for it never sends more.
MAX_STOP_SEQUENCES = 4
# A stop sequence is matched against every new piece of text (and the transformers engine
# builds a token table for each): a short marker is what a stop is for.
MAX_STOP_CHARS = 64


class PromptTooLong(ValueError):
    """A rendered prompt over `serving.max_prompt_tokens`; the message says by how much."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"prompt of {tokens} tokens (chat template applied) exceeds the limit "
                         f"of {limit} (serving.max_prompt_tokens); send fewer or shorter "
                         "messages")
        self.tokens = tokens
        self.limit = limit


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def check_prompt_length(settings: Settings, chars: int) -> None:
    """400 when a prompt is longer than `serving.max_prompt_chars`."""
    limit = settings.serving.max_prompt_chars
    if chars > limit:
        raise _bad_request(f"prompt of {chars} characters exceeds the limit of {limit} "
                           "(serving.max_prompt_chars)")


def check_prompt_tokens(settings: Settings, tokens: int) -> None:
    """400 when a rendered prompt has more than `serving.max_prompt_tokens` tokens."""
    if tokens > settings.serving.max_prompt_tokens:
        raise _bad_request(str(PromptTooLong(tokens, settings.serving.max_prompt_tokens)))


def stop_problems(stop: str | list[str] | None) -> list[str]:
    """What is wrong with a request's `stop` (empty when nothing is)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    problems = []
    if len(stops) > MAX_STOP_SEQUENCES:
        problems.append(f"stop has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES} are "
                        "allowed")
    problems += [f"stop[{index}] is {len(text)} characters long; at most {MAX_STOP_CHARS} "
                 "are allowed" for index, text in enumerate(stops) if len(text) > MAX_STOP_CHARS]
    return problems


def completion_limit(settings: Settings, body: ChatCompletionRequest) -> tuple[int, list[str]]:
    """The new tokens the request may generate (its own `max_tokens` or
    `max_completion_tokens`, else the operator's `model.max_new_tokens`), and the problems
    when it asks for more than the operator allows."""
    limit = settings.model.max_new_tokens
    problems = [f"{name} {value} exceeds the limit {limit} (model.max_new_tokens)"
                for name, value in (("max_tokens", body.max_tokens),
                                    ("max_completion_tokens", body.max_completion_tokens))
                if value is not None and value > limit]
    return body.max_tokens or body.max_completion_tokens or limit, problems


def check_chat_request(settings: Settings, body: ChatCompletionRequest) -> int:
    """The request's max new tokens, once its message count, stop sequences, `max_tokens`
    and prompt characters are within limits; else one 400 listing every problem."""
    serving = settings.serving
    problems = []
    if len(body.messages) > serving.max_messages:
        problems.append(f"{len(body.messages)} messages exceed the limit of "
                        f"{serving.max_messages} (serving.max_messages)")
    problems += stop_problems(body.stop)
    max_new, token_problems = completion_limit(settings, body)
    problems += token_problems
    chars = request_chars(body)
    if chars > serving.max_prompt_chars:
        problems.append(f"prompt of {chars} characters exceeds the limit of "
                        f"{serving.max_prompt_chars} (serving.max_prompt_chars)")
    if problems:
        raise _bad_request("; ".join(problems))
    return max_new
