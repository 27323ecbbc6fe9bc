import pytest

from pipelines.core.prompts import decision_prompt, parse_answer
from pipelines.core.records import Choice, Task

TASK = Task("t", "arc_easy", "train", "What barks?", [Choice("A", "a bird"), Choice("B", "dog"), Choice("C", "hot dog")], "B")


def test_decision_prompt_is_the_released_format():
    assert decision_prompt(TASK) == ("What barks?\nChoose the most plausible answer. Respond only with the letter and "
                                     "the full answer text from the list below:\nA) a bird\nB) dog\nC) hot dog")


@pytest.mark.parametrize("text, expected", [
    ("B) dog", ("B", "letter")), ("B.", ("B", "letter")), ("(C) hot dog", ("C", "letter")),
    ("Answer: B", ("B", "letter")), ("The correct answer is C", ("C", "letter")), ("**B: dog**", ("B", "letter")),
    ("B", ("B", "letter")), ("A a bird", ("A", "letter")),
    ("I would say hot dog.", ("C", "text")),  # "dog" inside "hot dog" is not a second mention
    ("dog", ("B", "text")),
    ("A cat", (None, "unparseable")),  # the article "A" is not a label
    ("Neither a bird nor a dog", (None, "unparseable")),  # two options: never guess
    ("", (None, "unparseable")), ("E) elephant", (None, "unparseable")),
])
def test_answer_parsing(text, expected):
    assert parse_answer(text, TASK) == expected
