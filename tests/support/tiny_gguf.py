"""The tiny test model as a GGUF, so the llama.cpp engine runs in tests in seconds.

The tiny model (tests/conftest.py) is a random 2-layer Llama with the real SmolLM2
tokenizer, so `engines/gguf_base.py` writes it with the packaged SmolLM2 GGUF's tokenizer
and chat template, in float32: both engines then compute the same function.
"""

from __future__ import annotations

from pathlib import Path

from engines.gguf_base import export_base_gguf
from evolora.models import PACKAGED_MODELS


def write_tiny_gguf(model_dir: Path, out_name: str = "model.gguf") -> Path:
    """Write `<model_dir>/<out_name>` from the HF folder; returns its path."""
    return export_base_gguf(model_dir, PACKAGED_MODELS["smollm2-135m"].gguf_path(),
                            model_dir / out_name)
