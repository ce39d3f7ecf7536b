"""Closing the loop: verified serving traces become the next cycle's training rows."""

from tasks.harvest.pipeline import harvest_into_training
from tasks.harvest.traces import harvest_traces, mix_with_synthetic, trace_to_row

__all__ = ["harvest_into_training", "harvest_traces", "mix_with_synthetic", "trace_to_row"]
