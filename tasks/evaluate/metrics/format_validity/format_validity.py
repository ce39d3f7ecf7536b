"""Valid ReAct format: every step parses and the transcript ends with a Final Answer."""

import datasets
import evaluate

from agent.react_format import parse_trace

_DESCRIPTION = "Fraction of transcripts in valid ReAct format ending with a Final Answer."
_KWARGS = """
predictions: list of str, full agent transcripts.
references: list of int, the number of tool calls the problem needs (used for a second rate).
Returns: {"valid_format_rate": float, "enough_steps_rate": float}.
"""


class FormatValidity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[int]) -> dict[str, float]:
        if not predictions:
            return {"valid_format_rate": 0.0, "enough_steps_rate": 0.0}
        valid = enough = 0
        for transcript, needed in zip(predictions, references, strict=True):
            steps = parse_trace(transcript)
            ok = bool(steps) and all(s.error is None for s in steps)
            ok = ok and steps[-1].final_answer is not None
            valid += ok
            enough += ok and sum(s.action is not None for s in steps) >= needed
        return {
            "valid_format_rate": valid / len(predictions),
            "enough_steps_rate": enough / len(predictions),
        }
