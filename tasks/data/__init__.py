"""Verified synthetic data: skills, generation, checks, splits and the frozen test set.

The skills and their question templates are data files (`tasks/data/catalogue/*.yaml`);
`recipes` draws each problem's numbers and plans its tool calls, `generate` turns them into
ReAct examples, `checks` verifies them, `dedup` drops repeats, `splits` builds train, eval and
the frozen test split, and `split_io` saves, loads, hashes and logs them.
"""

from tasks.data.checks import verify_example
from tasks.data.dedup import deduplicate
from tasks.data.pipeline import build_and_log_splits
from tasks.data.report import GenerationReport
from tasks.data.split_io import (
    dataset_hash,
    load_split,
    log_dataset_to_mlflow,
    save_split,
    validate_row,
)
from tasks.data.splits import SplitBundle, TestSetCorruptedError, build_splits

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
