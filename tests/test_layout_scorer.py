import torch

from pipelines.layout import Sequence, first_user_message_positions, record_sequences
from pipelines.prompts import decision_conversation, explanation_conversation
from pipelines.records import Choice, Task
from pipelines.scorer import TargetScorer

TASK = Task("t", "arc_easy", "train", "Which gas do plants absorb?",
            [Choice("A", "oxygen"), Choice("B", "carbon dioxide"), Choice("C", "helium")], "B")


def test_features_are_the_question_turn_at_the_same_positions(tokenizer):
    target = tokenizer("B) carbon dioxide", add_special_tokens=False).input_ids
    sequences = record_sequences(tokenizer, decision_conversation(TASK),
                                 explanation_conversation(TASK, "B) carbon dioxide"), target, [[5, 6], []],
                                 "first_user_message")
    decision, *explanations = sequences
    text = tokenizer.decode([decision.prompt_ids[p] for p in decision.feature_positions])
    assert text == decision_conversation(TASK)[0]["content"]  # every question token, nothing else
    special = set(tokenizer.all_special_ids)
    assert not special & {decision.prompt_ids[p] for p in decision.feature_positions}
    for explanation in explanations:
        assert explanation.feature_positions == decision.feature_positions
        assert [explanation.prompt_ids[p] for p in explanation.feature_positions] == \
               [decision.prompt_ids[p] for p in decision.feature_positions]
        assert len(explanation.prompt_ids) > len(decision.prompt_ids)


def test_string_aligned_mode_takes_every_non_special_token(tokenizer):
    sequences = record_sequences(tokenizer, decision_conversation(TASK), explanation_conversation(TASK, "B"),
                                 [33], [[5]], "string_aligned")
    decision, explanation = sequences
    special = set(tokenizer.all_special_ids)
    assert len(decision.feature_positions) == sum(t not in special for t in decision.prompt_ids)
    assert len(explanation.feature_positions) > len(decision.feature_positions)  # system block, decision, why


def reference_log_prob(model, ids: list[int], prompt_len: int) -> float:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return float(sum(logits[t - 1, ids[t]] for t in range(prompt_len, len(ids))))


def test_scorer_equals_plain_forward_with_full_head(tiny_model, tokenizer):
    prompt, positions = first_user_message_positions(tokenizer, decision_conversation(TASK))
    target = tokenizer(" carbon dioxide, because plants", add_special_tokens=False).input_ids
    scorer = TargetScorer(tiny_model, Sequence(prompt, target, positions), baseline_id=0, batch_size=3)
    masks = torch.ones(5, len(positions), dtype=torch.long)
    masks[1, :4] = 0
    masks[2, ::2] = 0
    masks[3] = 0
    with torch.inference_mode():
        ours = scorer(masks)
    for row, mask in enumerate(masks):
        ids = list(prompt)
        for f, keep in enumerate(mask.tolist()):
            if keep != 1:
                ids[positions[f]] = 0
        reference = reference_log_prob(tiny_model, ids + target, len(prompt))
        assert abs(ours[row].item() - reference) <= 1e-5 * abs(reference)
    assert scorer.forwards == 5


def test_first_position_target_is_a_bag_of_tokens(tiny_model, tokenizer):
    prompt, positions = first_user_message_positions(tokenizer, decision_conversation(TASK))
    target = [100, 200, 100]
    scorer = TargetScorer(tiny_model, Sequence(prompt, target, positions), 0, target="first_position")
    with torch.inference_mode():
        value = scorer(torch.ones(1, len(positions)))[0].item()
        log_probs = tiny_model(input_ids=torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
    assert abs(value - float(2 * log_probs[100] + log_probs[200])) < 1e-4
