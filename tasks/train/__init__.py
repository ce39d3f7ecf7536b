"""Training one LoRA/QLoRA adapter: the memory plan, the trainer, the adapter's manifest."""

from tasks.train.memory_plan import DoesNotFit, TrainPlan, plan_training
from tasks.train.recovery import TrainingOutOfMemory
from tasks.train.trainer import (
    ADAPTER_MANIFEST,
    TrainResult,
    read_adapter_manifest,
    train_adapter,
    verify_adapter_files,
)

__all__ = [
    "ADAPTER_MANIFEST",
    "DoesNotFit",
    "TrainPlan",
    "TrainResult",
    "TrainingOutOfMemory",
    "plan_training",
    "read_adapter_manifest",
    "train_adapter",
    "verify_adapter_files",
]
