"""Rule-based rewording of generated questions: wording variety without a teacher model.

A 135M model trained on a few hundred question templates learns the templates, not the
language: a test question worded differently ("depreciates", "for each ounce", "N days
later") is mapped to the wrong plan. A teacher LLM fixes that by paraphrasing; where none
can (the embedded 135M model rarely passes the paraphrase checks) these rules vary the
everyday phrasing of train and eval questions: synonyms for rates, prices, growth and
loss, dates and openers. Every rewrite keeps the meaning and the numbers (the same
`check_paraphrase` that guards the teacher's paraphrases checks it), so the trace and
answer stay right. The frozen test split is never reworded.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

Rule = tuple[re.Pattern[str], tuple[str, ...]]


_DATE = r"\d{4}-\d{2}-\d{2}|[A-Z][a-z]+ \d{1,2}, \d{4}"


def _rule(pattern: str, *choices: str) -> Rule:
    return re.compile(pattern, re.IGNORECASE), choices


# Each rule: a phrase and interchangeable ways to say it (the phrase itself is always one of
# them, so a rewrite may keep it). Groups never mix opposite meanings: growth words only
# replace growth words, loss words only loss words.
_RULES: tuple[Rule, ...] = (
    _rule(r"(?<!compounded )\b(?:per year|a year|each year|every year|yearly|annually|per annum)\b",
          "per year", "a year", "each year", "every year", "yearly", "annually", "per annum"),
    _rule(r"\bcompounded (?:yearly|annually|once a year|every year)\b",
          "compounded yearly", "compounded annually", "compounded once a year",
          "compounded every year"),
    _rule(r"\b(?:grows|rises|increases|goes up)\b", "grows", "rises", "increases", "goes up"),
    # Not "falls": "which weekday falls on" is no loss.
    _rule(r"\b(?:loses|shrinks by|drops|decreases)\b", "loses", "shrinks by", "drops",
          "decreases"),
    # "daily" only where it ends a clause: "a daily fee" is an adjective.
    _rule(r"\b(?:per day|a day|each day|for each day)\b|\bdaily(?=[.,?!])",
          "per day", "a day", "each day", "daily", "for each day"),
    _rule(r"\b(?:per night|a night|each night)\b", "per night", "a night", "each night"),
    _rule(r"\b(?:at|for) \$(\d[\d.]*) per (?!day\b|night\b|year\b)(\w+)",
          r"at $\1 per \2", r"at $\1 a \2", r"for $\1 each \2", r"at $\1 for every \2"),
    _rule(r"\bcosts? \$(\d[\d.]*) per (?!day\b|night\b)(\w+)",
          r"costs $\1 per \2", r"costs $\1 for each \2", r"is priced at $\1 a \2",
          r"sells for $\1 per \2"),
    _rule(r"\b(?:day of the week|weekday)\b", "day of the week", "weekday"),
    _rule(r"\b(\d+) days after\b", r"\1 days after", r"\1 days on from", r"\1 days past"),
    _rule(r"\bin (\d+) days\b", r"in \1 days", r"\1 days from then", r"\1 days later"),
    _rule(r"^What is\b", "What is", "What's", "Tell me", "Work out", "Find"),
    _rule(r"^How much is\b", "How much is", "What is", "Work out how much is"),
    _rule(r"^How many\b", "How many", "Tell me how many", "Work out how many"),
    _rule(r"^Convert\b", "Convert", "Change", "Turn"),
    _rule(r"\bWhat is the total cost\?", "What is the total cost?", "What is the bill?",
          "How much is that in total?", "What does it all cost?"),
    _rule(r"\bWhat do you pay\?", "What do you pay?", "How much do you pay?",
          "What is the cost?"),
    _rule(r"\b(?:altogether|in total)\b", "altogether", "in total", "all together"),
    _rule(r"\bthe total(?=[.,?!]| in\b| to\b)", "the total", "the sum", "the whole amount"),
    _rule(r"\bapiece\b", "apiece", "each"),
    _rule(r"\bcompute\b", "compute", "calculate", "work out"),
    _rule(r"\bfinal (?:amount|balance|value)\b", "final amount", "final balance", "final value"),
    _rule(r"\bthen give the balance in\b", "then give the balance in",
          "then state the balance in", "and report the balance in"),
    _rule(r"\b(?:portions|amounts|batches|sets|lots|servings) of\b", "portions of",
          "amounts of", "batches of", "sets of", "lots of", "servings of"),
    _rule(r", in (\w+(?: \w+)?)\?$", r", in \1?", r", expressed in \1?", r", measured in \1?",
          r", converted to \1?"),
    _rule(r", converted to (\w+(?: \w+)?)\?$", r", converted to \1?", r", in \1?"),
    _rule(r"^How much do (.+?) cost\?", r"How much do \1 cost?", r"What do \1 cost?",
          r"What is the price of \1?"),
    _rule(r"\bthe price of\b", "the price of", "the cost of"),
    _rule(r"\bfrom (" + _DATE + r") (?:to|until) (" + _DATE + r")",
          r"from \1 to \2", r"from \1 until \2", r"between \1 and \2", r"for \1 to \2"),
    _rule(r"(?<=\d)% (?:off|discount)\b", "% off", "% discount"),
    _rule(r", then\b", ", then", ", and then", " and after that"),
    _rule(r"\b(?:savings|a deposit|an investment) of\b", "savings of", "a deposit of",
          "an investment of"),
)


_IMPERATIVE_OPENERS = ("Tell me", "Work out", "Find")


def reword(question: str, rng: random.Random, max_rewrites: int = 3,
           accept: Callable[[str, str], bool] | None = None) -> str:
    """`question` with up to `max_rewrites` of its phrases said another way (same meaning).

    `accept(before, after)` vets each rewrite (the data pipeline passes its fact check:
    "per day" -> "daily" drops the word "day", which the checker reads as a unit).
    """
    applicable = [rule for rule in _RULES if rule[0].search(question)]
    rng.shuffle(applicable)
    text = question
    for pattern, choices in applicable[:max_rewrites]:
        candidate = _tidy(pattern.sub(_chooser(rng, choices), text, count=1))
        if accept is None or accept(text, candidate):
            text = candidate
    return text


def _chooser(rng: random.Random, choices: tuple[str, ...]) -> Callable[[re.Match[str]], str]:
    def choose(match: re.Match[str]) -> str:
        return match.expand(rng.choice(choices))

    return choose


def _tidy(text: str) -> str:
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)  # "a ounce" -> "an ounce"
    text = text[:1].upper() + text[1:]
    if text.startswith(_IMPERATIVE_OPENERS) and text.endswith("?"):
        text = text[:-1] + "."  # "Work out 3 plus 4." is no question
    return text
