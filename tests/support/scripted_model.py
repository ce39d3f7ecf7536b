"""A real (tiny) transformers model whose greedy output is a script: the serving tests' way to
make the model write an exact ReAct step, through the real runtime, tokenizer and generate.

The model is a lookup table. Each line of the script is one token of its own tokenizer
(other text is split into single characters), attention and MLP are zeroed so each
position's hidden state is the embedding of its own token, and the output head maps a
token to the token that follows it in the script (else end of text). Greedy decoding then
continues whatever prompt is given, from its last token:

    script = {ASSISTANT_START: "Thought: add.\\n", "Thought: add.\\n": "Final Answer: 3"}

answers "Thought: add.\\nFinal Answer: 3" to every fresh conversation.
"""

from __future__ import annotations

from pathlib import Path

# The chat template's opening of an assistant turn: one token, so a script can start on it.
ASSISTANT_START = "<|im_start|>assistant\n"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}" + "<|im_start|>"
                 "assistant\n{% endif %}")
_SPECIAL = ["[UNK]", "[PAD]", "</s>", "<|im_start|>", "<|im_end|>"]
_CHARACTERS = [chr(code) for code in range(32, 127)] + ["\n"]


def build_scripted_model(out_dir: Path, script: dict[str, str]) -> Path:
    """Write a model folder whose greedy continuation after token `a` is `script[a]`."""
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(_SPECIAL + _CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()  # tokens are joined as they are, without spaces
    backend.add_special_tokens([AddedToken(t, normalized=False) for t in _SPECIAL[1:]])
    lines = [t for t in dict.fromkeys([*script, *script.values()]) if t not in vocab]
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in lines])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                        pad_token="[PAD]", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.get_vocab()
    size = len(tokenizer)

    config = LlamaConfig(vocab_size=size, hidden_size=size + (-size) % 8, intermediate_size=8,
                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         eos_token_id=ids["</s>"], pad_token_id=ids["[PAD]"])
    model = LlamaForCausalLM(config)
    eos = ids["</s>"]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
        model.model.embed_tokens.weight[:, :size] = torch.eye(size)
        head = model.lm_head.weight
        head[eos, :size] = 1.0  # by default every token is followed by the end
        for token, following in script.items():
            head[eos, ids[token]] = 0.0
            head[ids[following], ids[token]] = 1.0
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
