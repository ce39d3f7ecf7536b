"""Valid tool calls: known tool, argument the tool accepts; and the right first tool."""

import datasets
import evaluate

from agent.react_format import parse_trace
from agent.tools import default_tools
from agent.tools import run_tool

_DESCRIPTION = "How many of the agent's tool calls were valid, and whether it chose the right tool."
_KWARGS = """
predictions: list of str, full agent transcripts (Thought/Action/Observation/Final Answer).
references: list of str, the expected tool names in order, comma-separated.
Returns: {"valid_tool_call_rate": float, "tool_choice_accuracy": float}.
"""


class ToolCallValidity(evaluate.Metric):
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
        tools = default_tools()
        calls = valid = right_first = 0
        for transcript, expected in zip(predictions, references, strict=True):
            used = [s.action for s in parse_trace(transcript) if s.action is not None]
            for call in used:
                calls += 1
                valid += not run_tool(tools, call.tool, call.argument).startswith("Error")
            wanted = [name for name in expected.split(",") if name]
            right_first += bool(used and wanted and used[0].tool == wanted[0])
        return {
            "valid_tool_call_rate": valid / calls if calls else 0.0,
            "tool_choice_accuracy": right_first / len(references) if references else 0.0,
        }
