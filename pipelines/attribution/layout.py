"""Token layout of the two conversations: templated prompt ids and which positions are features.

Default features are the tokens of the first user message (question, instruction, options). The
decision conversation and the explanation conversation render that message identically after the
same template header, so the features sit at the same positions in both and vectors align exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sequence:
    """One attribution problem: log p(target | prompt), features = positions in prompt_ids."""

    prompt_ids: list[int]
    target_ids: list[int]
    feature_positions: list[int]


class LayoutError(ValueError):
    pass


def render(tokenizer, conversation: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def chat_ids(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    # The rendered text already holds BOS where the template wants one: add no second one.
    return tokenizer(render(tokenizer, conversation), add_special_tokens=False).input_ids


def first_user_message_positions(tokenizer, conversation: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, positions of the tokens lying wholly inside the first user message's text)."""
    text = render(tokenizer, conversation)
    content = conversation[0]["content"]
    start = text.find(content)
    if start < 0:
        raise LayoutError("the chat template does not render the first user message verbatim")
    end = start + len(content)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    positions = [i for i, (a, b) in enumerate(encoded.offset_mapping) if start <= a and b <= end and b > a]
    return encoded.input_ids, positions


def non_special_positions(tokenizer, ids: list[int]) -> list[int]:
    """The released code's features: every prompt token that is not a special token."""
    special = set(tokenizer.all_special_ids)
    return [i for i, token in enumerate(ids) if token not in special]


def record_sequences(tokenizer, decision_conv: list[dict[str, str]], explanation_conv: list[dict[str, str]],
                     decision_ids: list[int], explanation_ids: list[list[int]], features: str,
                     record_id: str = "?") -> list[Sequence]:
    """The decision's sequence, then one per explanation, over the chosen features."""
    if features == "string_aligned":
        d_prompt, e_prompt = chat_ids(tokenizer, decision_conv), chat_ids(tokenizer, explanation_conv)
        return [Sequence(d_prompt, decision_ids, non_special_positions(tokenizer, d_prompt))] + [
            Sequence(e_prompt, ids, non_special_positions(tokenizer, e_prompt)) for ids in explanation_ids]
    d_prompt, positions = first_user_message_positions(tokenizer, decision_conv)
    e_prompt, e_positions = first_user_message_positions(tokenizer, explanation_conv)
    if not positions:
        raise LayoutError(f"record {record_id}: the first user message has no whole tokens to attribute")
    last = positions[-1] + 1
    if e_positions != positions or e_prompt[:last] != d_prompt[:last]:
        raise LayoutError(f"record {record_id}: the question tokens differ between the decision and the "
                          "explanation conversation, so their attributions cannot be aligned by position")
    return [Sequence(d_prompt, decision_ids, positions)] + [
        Sequence(e_prompt, ids, positions) for ids in explanation_ids]
