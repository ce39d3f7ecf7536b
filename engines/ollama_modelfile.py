"""An Ollama Modelfile for a base GGUF plus a GGUF LoRA adapter.

    family = chat_family(base_gguf)
    text = render_modelfile(family, system=SYSTEM_PROMPT, extra_stops=["Observation:"])

Ollama renders prompts with a Go template of its own, not with the tokenizer's Jinja chat
template, so the base's chat format is recognised from its GGUF (`tokenizer.chat_template`)
and mapped to a Go template written here for that family, in the style of Ollama's own
templates: `.Messages` holds the conversation, Modelfile's `SYSTEM` arrives as its first
message (role "system") unless the request brings one, and a trailing assistant message is
continued rather than closed, which is how a ReAct turn resumes after its Observation.

Ollama's Modelfile parser has no escapes: a triple-quoted value ends at the first triple
quote, a double-quoted one at the end of its line. Values it could not read are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class ModelfileError(ValueError):
    """A Modelfile that cannot be written; the message names the cause and the fix."""


@dataclass(frozen=True)
class ChatFamily:
    """A chat format: the marker that identifies it, Ollama's template, its end tokens."""

    name: str
    marker: str
    template: str
    stops: tuple[str, ...]


# ChatML (SmolLM2, Qwen, ...): HF renders `<|im_start|>{role}\n{content}<|im_end|>\n` per
# message and `<|im_start|>assistant\n` as the generation prompt.
CHATML = ChatFamily(
    name="chatml",
    marker="<|im_start|>",
    template="""{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}""",
    stops=("<|im_end|>", "<|im_start|>"),
)

# Gemma has no system role: its HF template puts the system text, then a blank line, at the
# start of the first user turn, and calls the assistant "model". The tokenizer adds <bos>.
GEMMA = ChatFamily(
    name="gemma",
    marker="<start_of_turn>",
    template="""{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and $.System (eq $i 1) }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<start_of_turn>model
{{ end }}
{{- end }}""",
    stops=("<end_of_turn>",),
)

CHAT_FAMILIES = (CHATML, GEMMA)


def read_chat_template(base_gguf: Path) -> str | None:
    """The Jinja chat template stored in a GGUF (`tokenizer.chat_template`), or None."""
    from gguf import GGUFReader

    field = GGUFReader(str(base_gguf)).fields.get("tokenizer.chat_template")
    value = field.contents() if field is not None else None
    return value if isinstance(value, str) and value.strip() else None


def chat_family(base_gguf: Path) -> ChatFamily:
    """The chat format of a base GGUF, recognised from its chat template's markers."""
    template = read_chat_template(Path(base_gguf))
    names = [family.name for family in CHAT_FAMILIES]
    if template is None:
        raise ModelfileError(f"{base_gguf} has no tokenizer.chat_template, so its chat format "
                             f"is unknown; use the GGUF of a {' or '.join(names)} chat model "
                             "(model.gguf)")
    for family in CHAT_FAMILIES:
        if family.marker in template:
            return family
    raise ModelfileError(
        f"the chat template of {Path(base_gguf).name} is neither {' nor '.join(names)}, the "
        "formats with an Ollama template here; use such a base, or add its Go template to "
        "engines/ollama_modelfile.py")


def render_modelfile(family: ChatFamily, *, system: str, base: str = "./base.gguf",
                     adapter: str = "./adapter.gguf", extra_stops: Sequence[str] = (),
                     temperature: float = 0.0) -> str:
    """The Modelfile text: FROM, ADAPTER, TEMPLATE, SYSTEM and PARAMETER lines.

    `base` and `adapter` are written as given; Ollama resolves relative paths against the
    Modelfile's folder.
    """
    for label, value in (("the system prompt", system), ("the template", family.template)):
        if '"""' in value:
            raise ModelfileError(f'{label} contains """, which ends a Modelfile value early; '
                                 "remove the triple quote")
    stops = list(dict.fromkeys([*family.stops, *extra_stops]))
    for stop in stops:
        if not stop or '"' in stop or "\n" in stop or stop != stop.strip():
            raise ModelfileError(f"stop sequence {stop!r} cannot be a Modelfile parameter; "
                                 "use one without quotes, newlines or edge spaces")
    for path in (base, adapter):
        if not path or any(char.isspace() for char in path):
            raise ModelfileError(f"path {path!r} must be non-empty and without spaces")
    lines = [f"FROM {base}", f"ADAPTER {adapter}", f'TEMPLATE """{family.template}"""',
             f'SYSTEM """{system}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append(f"PARAMETER temperature {temperature:g}")
    return "\n".join(lines) + "\n"
