"""The conversations of the method (docs/method.md section 3) and the parsing of the answer letter."""

from __future__ import annotations

import re

from pipelines.core.records import Task

INSTRUCTION = "Choose the most plausible answer. Respond only with the letter and the full answer text from the list below:"
WHY_QUESTION = "Why did you make that choice? Explain briefly."


def decision_prompt(task: Task) -> str:
    options = "\n".join(f"{c.label}) {c.text}" for c in task.choices)
    return f"{task.question}\n{INSTRUCTION}\n{options}"


def decision_conversation(task: Task) -> list[dict[str, str]]:
    return [{"role": "user", "content": decision_prompt(task)}]


def explanation_conversation(task: Task, decision: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": decision_prompt(task)},
        {"role": "assistant", "content": decision},
        {"role": "user", "content": WHY_QUESTION},
    ]


_PUNCTUATED_LETTER = re.compile(r"^\W*\(?([A-J])\s*[).:]")  # "B)", "B.", "(B)", "**B:"
_ANSWER_PHRASE = re.compile(r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\(?([A-J])\b(?![''\w])", re.I)
_LETTER_THEN_TEXT = re.compile(r"^\W*([A-J])\s+(.+)", re.S)


def parse_answer(text: str, task: Task) -> tuple[str | None, str]:
    """(label, how) with how in letter | text | unparseable. Never guesses between options."""
    stripped = text.strip()
    by_label = {c.label: c.text for c in task.choices}
    match = _PUNCTUATED_LETTER.match(stripped) or _ANSWER_PHRASE.search(stripped)
    if match and match.group(1) in by_label:
        return match.group(1), "letter"
    if stripped.strip("*\"' ") in by_label:
        return stripped.strip("*\"' "), "letter"
    # "B cat": a bare letter counts only when the option's own text follows (else "A bird..." would parse)
    match = _LETTER_THEN_TEXT.match(stripped)
    if match and match.group(1) in by_label and match.group(2).lower().startswith(by_label[match.group(1)].lower()):
        return match.group(1), "letter"
    lowered = stripped.lower()
    mentioned = [label for label, option in by_label.items() if option.strip().lower() in lowered]
    # an option contained in another one ("dog" in "hot dog") is not a second mention
    mentioned = [m for m in mentioned
                 if not any(o != m and by_label[m].lower() in by_label[o].lower() for o in mentioned)]
    if len(mentioned) == 1:
        return mentioned[0], "text"
    return None, "unparseable"
