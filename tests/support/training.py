"""Settings for short real trainings of the tiny model."""

from __future__ import annotations

from typing import Any

from evolora.settings import Settings


def with_train(settings: Settings, **train: Any) -> Settings:
    """`settings` with these `train` fields changed (max_steps, batch_size, ...)."""
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})
