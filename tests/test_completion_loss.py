"""The completion-only loss runs the vocabulary head on labelled positions only: it must be
the model's own loss, with the model's own gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.mark.parametrize("num_items", [None, 7])
def test_completion_loss_is_the_models_own_loss_and_gradients(
    tiny_model_dir: Path, num_items: int | None
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tasks.train.loss import completion_loss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj",
                                                                              "v_proj"]))
    for name, parameter in model.named_parameters():  # LoRA B starts at 0: make it count
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    ids = torch.randint(0, 1000, (3, 24))
    labels = ids.clone()
    labels[:, :10] = -100
    labels[1, 18:] = -100  # padding at the end of one row
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    if num_items is None:
        reference = model(**inputs).loss
    else:
        reference = model(**inputs, num_items_in_batch=num_items).loss
    expected = grads(reference)
    ours = completion_loss(model.get_base_model(), inputs, num_items)
    assert torch.allclose(ours, reference, atol=1e-5), (ours, reference)
    for mine, theirs in zip(grads(ours), expected, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
