"""Scoring candidates by running the real agent with real tools, tracked in MLflow."""

from tasks.evaluate.runner import evaluate_adapters
from tasks.evaluate.scoring import EvalResult, evaluate_candidate, score_runs

__all__ = ["EvalResult", "evaluate_adapters", "evaluate_candidate", "score_runs"]
