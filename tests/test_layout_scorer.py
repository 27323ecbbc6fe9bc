import torch

from pipelines.attribution.layout import (
    Sequence,
    first_user_message_positions,
    record_sequences,
)
from pipelines.attribution.scorer import TargetScorer
from pipelines.core.prompts import decision_conversation, explanation_conversation
from pipelines.core.records import Choice, Task

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


def record(tokenizer, decision_text, explanation_texts):
    # generate stores the sampled ids and the stripped text, which the template re-tokenises
    decision_ids = tokenizer(decision_text, add_special_tokens=False).input_ids
    explanation_ids = [tokenizer(t, add_special_tokens=False).input_ids if t else [] for t in explanation_texts]
    return record_sequences(tokenizer, decision_conversation(TASK),
                            explanation_conversation(TASK, decision_text.strip()), decision_ids, explanation_ids,
                            "first_user_message")


def test_record_scorer_equals_one_scorer_per_target(tiny_model, tokenizer):
    from pipelines.attribution.scorer import RecordScorer

    sequences = record(tokenizer, "B) carbon dioxide", ["Plants take in CO2 to make sugar.", "", "Yes", "Because."])
    shared = RecordScorer(tiny_model, sequences[0], sequences[1:], baseline_id=0, batch_size=4)
    assert shared.decision_inside
    torch.manual_seed(3)
    masks = (torch.rand(7, len(sequences[0].feature_positions)) > 0.5).long()
    with torch.inference_mode():
        together = shared.all_targets(masks)
        for index, sequence in enumerate(sequences):
            alone = TargetScorer(tiny_model, sequence, 0)(masks)
            torch.testing.assert_close(together[:, index], alone, rtol=1e-5, atol=1e-4)
    assert shared.forwards == 7  # one prefix forward per mask serves all five targets


def test_record_scorer_memoises_masks_across_targets(tiny_model, tokenizer):
    from pipelines.attribution.scorer import RecordScorer

    sequences = record(tokenizer, " B) carbon dioxide", ["Because plants breathe it."])
    shared = RecordScorer(tiny_model, sequences[0], sequences[1:], baseline_id=0, batch_size=4)
    assert not shared.decision_inside  # the sampled leading space is gone from the template's text
    masks = torch.ones(3, len(sequences[0].feature_positions), dtype=torch.long)
    masks[1, 0] = 0
    masks[2, 1:] = 0
    with torch.inference_mode():
        first = shared.target(0)(masks)
        second = shared.target(1)(masks)
        torch.testing.assert_close(first, TargetScorer(tiny_model, sequences[0], 0)(masks), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(second, TargetScorer(tiny_model, sequences[1], 0)(masks), rtol=1e-5, atol=1e-4)
    assert shared.forwards == 3 and len(shared.memo) == 3


def test_batches_start_at_their_first_perturbed_position(tiny_model, tokenizer):
    prompt, positions = first_user_message_positions(tokenizer, decision_conversation(TASK))
    sequence = Sequence(prompt, tokenizer(" carbon dioxide", add_special_tokens=False).input_ids, positions)
    shared, plain = TargetScorer(tiny_model, sequence, 0), TargetScorer(tiny_model, sequence, 0, share_prefix=False)
    late = torch.ones(3, len(positions), dtype=torch.long)
    late[0, -1] = 0
    late[1, -3:] = 0
    untouched = torch.ones(2, len(positions), dtype=torch.long)
    with torch.inference_mode():
        for masks in (late, untouched):
            torch.testing.assert_close(shared(masks), plain(masks), rtol=1e-5, atol=1e-4)
    full = len(prompt) + len(sequence.target_ids)
    assert plain.tokens == 5 * full
    assert shared.tokens == 3 * (full - positions[-3]) + 2 * 1  # an untouched batch reruns one token
