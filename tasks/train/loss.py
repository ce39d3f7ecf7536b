"""The training loss: the causal-LM loss on the completion tokens, with the vocabulary head
run on those positions only."""

from __future__ import annotations

from typing import Any

import torch

# Architectures whose logits are exactly `lm_head(last hidden state)`, with a final soft cap
# where their config sets one: `completion_loss` may compute them itself.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "smollm3"}


def completion_loss(causal_lm: Any, inputs: dict[str, Any],
                    num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss on the labelled (completion) tokens of `inputs`.

    The prompt is about half of each example's tokens and its labels are -100, but the
    model's own forward projects every position onto the 49k-token vocabulary and keeps
    those logits for backward. Running the head only where there is a label cut a CPU step
    by about a third (`bench/train.py`); the loss and its gradients are the model's own
    (tests/test_completion_loss.py checks both). With `num_items_in_batch` the sum is
    divided by it (the Trainer's normalisation over an accumulated batch), else averaged.
    """
    body = {k: v for k, v in inputs.items() if k in {"input_ids", "attention_mask",
                                                     "position_ids"}}
    hidden = causal_lm.get_decoder()(**body).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    total = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum")
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    return total / keep.sum().clamp(min=1)
