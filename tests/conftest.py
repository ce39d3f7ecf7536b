"""Shared fixtures: a tiny random model with the real SmolLM2 tokenizer, isolated settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from evolora.models import PACKAGED_MODELS
from evolora.settings import Settings, load_settings

TINY_LAYERS = 2


def build_tiny_model(out_dir: Path) -> Path:
    """Write a 2-layer random Llama with the real SmolLM2 tokenizer to `out_dir` (HF + GGUF)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = PACKAGED_MODELS["smollm2-135m"].gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # The same weights as GGUF: the llama.cpp engine (the default) finds it in the folder.
    from tests.support.tiny_gguf import write_tiny_gguf

    write_tiny_gguf(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HF model folder, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def tiny_settings(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """configs/tiny.yaml pointed at the tiny model, with data and MLflow under tmp_path."""
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EVOLORA_MODEL__BASE", str(tiny_model_dir))
    monkeypatch.setenv("EVOLORA_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(tmp_path / "mlruns"))
    return load_settings("tiny")


@pytest.fixture
def tiny_train_rows(tiny_settings: Settings) -> Any:
    """The tiny config's training split (chat rows), generated under tmp_path."""
    from tasks.data import build_splits

    return build_splits(tiny_settings.data, tiny_settings.paths.data_dir).train


@pytest.fixture(autouse=True)
def default_logging() -> None:
    """Each test starts with structlog's defaults, whatever an earlier test configured
    (a level filter left behind would hide the events a test captures)."""
    import structlog

    structlog.reset_defaults()
