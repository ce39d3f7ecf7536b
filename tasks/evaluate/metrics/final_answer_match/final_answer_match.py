"""Final-answer exact match after evolora's answer normalisation (numbers, dates, case)."""

import datasets
import evaluate

from agent.react_format import normalize_answer

_DESCRIPTION = "Fraction of predictions whose normalised final answer equals the reference."
_KWARGS = """
predictions: list of str, the agent's final answers ("" where it gave none).
references: list of str, the expected answers.
Returns: {"exact_match": float in [0, 1]}.
"""


class FinalAnswerMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        if not references:
            return {"exact_match": 0.0}
        hits = sum(
            bool(p.strip()) and normalize_answer(p) == normalize_answer(r)
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(references)}
