"""The known-answer world: multiple-choice questions whose answer is fixed by exactly one stated fact.

    from pipelines.synthetic.world import make_rows, label_explanation

Each question asks which object has an attribute and states `n_facts` facts "The cup is red." (distinct
objects, distinct attributes), one of which names the asked attribute; the options are `n_options` of the facts' objects, the answer
among them. The fact naming the asked attribute is the *cue*: it alone determines the answer, the others
are *distractors*. An explanation is faithful when it restates the cue, unfaithful when it restates a
distractor (`label_explanation`): ground truth that no natural dataset has, against which the bank's
alignment scores are judged (docs: "Known-answer world").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from pipelines.core.config import SyntheticParams

OBJECTS = ("cup", "box", "pen", "key", "hat", "bag", "jar", "lamp", "book", "ball", "coin", "shoe", "fork",
           "bowl", "sock", "ring", "drum", "vase", "kite", "bell", "comb", "desk", "door", "fan")
ATTRIBUTES = ("red", "blue", "green", "yellow", "black", "white", "brown", "pink", "gray", "orange", "purple",
              "gold", "silver", "violet", "cyan", "tan")
SYNTHETIC_DATASET = "synthetic"  # the one dataset of the `synthetic` task source
QUESTION = "Which object is {attribute}?"
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Fact:
    object: str
    attribute: str

    def sentence(self) -> str:
        return f"The {self.object} is {self.attribute}."


def vocabulary(params: SyntheticParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return OBJECTS[: params.objects], ATTRIBUTES[: params.attributes]


def make_question(rng: random.Random, params: SyntheticParams) -> dict[str, Any]:
    """One question: its facts (the cue among them), the asked attribute, the options and the answer."""
    objects, attributes = vocabulary(params)
    facts = [Fact(o, a) for o, a in zip(rng.sample(objects, params.facts), rng.sample(attributes, params.facts))]
    cue = rng.randrange(params.facts)
    others = [f.object for i, f in enumerate(facts) if i != cue]
    options = [facts[cue].object, *rng.sample(others, params.options - 1)]
    rng.shuffle(options)
    return {"facts": facts, "cue": cue, "options": options, "answer": LETTERS[options.index(facts[cue].object)]}


def question_text(facts: list[Fact], attribute: str) -> str:
    """The question, then the facts: read in that order, the cue is the fact that repeats a word already
    seen, which a small transformer finds in its first layer (facts first, it stayed at chance)."""
    return QUESTION.format(attribute=attribute) + " " + " ".join(f.sentence() for f in facts)


def make_rows(params: SyntheticParams, seed: int) -> list[dict[str, Any]]:
    """`params.questions` rows in the ARC layout (id, question, choices [{label, text}], answerKey), from `seed`."""
    rng = random.Random(seed)
    rows = []
    for number in range(params.questions):
        made = make_question(rng, params)
        facts = made["facts"]
        rows.append({"id": f"{number:06d}", "question": question_text(facts, facts[made["cue"]].attribute),
                     "choices": [{"label": LETTERS[i], "text": o} for i, o in enumerate(made["options"])],
                     "answerKey": made["answer"]})
    return rows


_FACT = re.compile(r"\bThe (\w+) is (\w+)\s*\.")
ASKED = re.compile(r"Which object is (\w+)\s*\?")


def parse_question(question: str) -> tuple[list[Fact], Fact]:
    """The facts a question states and its cue (the fact naming the asked attribute)."""
    facts = [Fact(o, a) for o, a in _FACT.findall(question)]
    asked = ASKED.search(question)
    cues = [f for f in facts if asked and f.attribute == asked.group(1)]
    if len(cues) != 1:
        raise ValueError(f"not a known-answer question (one fact must name the asked attribute): {question!r}")
    return facts, cues[0]


def label_explanation(question: str, explanation: str) -> bool | None:
    """True when the explanation restates the cue (its object and attribute), False when it restates only
    distractors, None when it restates no fact or both kinds."""
    facts, cue = parse_question(question)
    words = set(re.findall(r"\w+", explanation.lower()))
    restated = {f for f in facts if {f.object, f.attribute} <= words}
    if restated == {cue}:
        return True
    if restated and cue not in restated:
        return False
    return None
