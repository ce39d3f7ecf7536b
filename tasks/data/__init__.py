"""Verified synthetic data: skills, generation, checks, splits and the frozen test set."""

from tasks.data.examples import (
    GenerationReport,
    SplitBundle,
    TestSetCorruptedError,
    build_splits,
    dataset_hash,
    deduplicate,
    load_split,
    log_dataset_to_mlflow,
    save_split,
    validate_row,
    verify_example,
)
from tasks.data.pipeline import build_and_log_splits

__all__ = [
    "GenerationReport",
    "SplitBundle",
    "TestSetCorruptedError",
    "build_and_log_splits",
    "build_splits",
    "dataset_hash",
    "deduplicate",
    "load_split",
    "log_dataset_to_mlflow",
    "save_split",
    "validate_row",
    "verify_example",
]
