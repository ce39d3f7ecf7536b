"""Training must teach: a short real training of SmolLM2-135M on one skill moves its
accuracy on held-out wordings far above the base model's.

The one test in the suite that fails if training stops learning (a broken loss, labels
that mask the completion, a learning rate of 0, an adapter saved without its weights, an
engine that ignores the adapter). It trains on the training wordings of `units` and is
scored, through the real agent and the default llama.cpp engine, on the frozen test
wordings, which training never sees. Measured on 2 cores (`pytest -q -s
tests/test_learning_signal.py`, 3:39): the base 0 of 12, the adapter 11 of 12 after 16 steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evolora.models import prepare_model
from evolora.settings import Settings, load_settings
from evolora.tracking import setup_mlflow
from tasks.data.generate import generate_examples

pytestmark = pytest.mark.slow

STEPS = 16
PROBLEMS = 12


@pytest.fixture
def real_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EVOLORA_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(tmp_path / "mlruns"))
    monkeypatch.setenv("EVOLORA_TRAIN__BATCH_SIZE", "8")
    monkeypatch.setenv("EVOLORA_TRAIN__LOGGING_STEPS", str(STEPS))
    monkeypatch.setenv("EVOLORA_MODEL__MAX_NEW_TOKENS", "64")
    return load_settings("demo")


def test_a_short_training_on_one_skill_beats_the_base_on_unseen_wordings(
    real_settings: Settings, tmp_path: Path
) -> None:
    import datasets

    from tasks.evaluate import evaluate_adapters
    from tasks.train import train_adapter

    settings = real_settings
    model = prepare_model("smollm2-135m", settings.paths.models_dir, settings.model.dtype)
    setup_mlflow(settings)
    train, _ = generate_examples("units", 96, split="train", seed=5, hard_fraction=0.0,
                                 reword_fraction=0.8)
    held_out, _ = generate_examples("units", PROBLEMS, split="test", seed=6,
                                    hard_fraction=0.0)
    assert not {r["question"] for r in train} & {r["question"] for r in held_out}

    result = train_adapter(settings, str(model.path), datasets.Dataset.from_list(train),
                           tmp_path / "adapters", "units", max_steps=STEPS)
    scores = evaluate_adapters(settings, str(model.path), held_out,
                               {"base": None, "units": result.adapter_dir})

    base, trained = scores["base"].accuracy, scores["units"].accuracy
    # Replies that end at end-of-text come back whole (a streamed reply once gained a U+FFFD
    # for the end-of-text token, and no final answer matched).
    assert not [r["transcript"] for r in scores["units"].rows if "\ufffd" in r["transcript"]]
    assert base <= 0.25, f"the base model already solves {base:.2f}: not a learning signal"
    assert trained >= 0.6 and trained >= base + 0.4, (
        f"after {STEPS} steps the adapter scores {trained:.2f} against the base's {base:.2f} "
        "on held-out wordings: training no longer teaches")
