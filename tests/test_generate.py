import torch

from pipelines.attribution.layout import chat_ids
from pipelines.core.config import GenerateParams
from pipelines.core.prompts import decision_conversation
from pipelines.core.records import Choice, Task
from pipelines.stages.generate import generate, sample, stop_token_ids

TASKS = [Task(f"t{n}", "arc_easy", "train", question, [Choice("A", "yes"), Choice("B", "no")], "A")
         for n, question in enumerate(["Is water wet?", "Do fish swim in the deep blue sea, usually, or not?", "Why?"])]


def test_sampling_is_per_sequence_seeded_whatever_the_batch(tiny_model, tokenizer):
    prompts = [chat_ids(tokenizer, decision_conversation(t)) for t in TASKS]
    stops = stop_token_ids(tiny_model, tokenizer)
    batch = sample(tiny_model, prompts, [1, 2, 3], 12, 0.7, 0.9, stops, tokenizer.pad_token_id)
    alone = [sample(tiny_model, [p], [s], 12, 0.7, 0.9, stops, tokenizer.pad_token_id)[0]
             for p, s in zip(prompts, [1, 2, 3])]
    assert batch == alone  # left padding, positions and the KV cache change nothing
    assert batch[0] != sample(tiny_model, prompts[:1], [4], 12, 0.7, 0.9, stops, tokenizer.pad_token_id)[0]


def test_near_zero_temperature_equals_greedy_generate(tiny_model, tokenizer):
    prompts = [chat_ids(tokenizer, decision_conversation(t)) for t in TASKS]
    ours = sample(tiny_model, prompts, [0, 0, 0], 10, 1e-6, 1.0, set(), tokenizer.pad_token_id)
    for prompt, tokens in zip(prompts, ours):
        reference = tiny_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10,
                                        eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
        assert tokens == reference[0, len(prompt):].tolist()


def test_generation_records(tiny_model, tokenizer):
    params = GenerateParams(n_explanations=3, max_new_tokens_decision=6, max_new_tokens_explanation=8, batch_size=4)
    records = generate(tiny_model, tokenizer, TASKS, params, seed=42, identity={"id": "tiny"})
    assert [r.id for r in records] == [t.id for t in TASKS]
    for record in records:
        assert len(record.explanations) == len(record.explanation_ids) == 3
        assert record.seeds == [42, 42, 43, 44]
        assert record.parse_status in ("letter", "text", "unparseable")
        assert (record.answer_label is None) == (record.parse_status == "unparseable")
        assert record.correct == (record.answer_label == "A")
        assert record.decision == tokenizer.decode(record.decision_ids, skip_special_tokens=True).strip()
        assert 0 < len(record.decision_ids) <= 6 and all(len(ids) <= 8 for ids in record.explanation_ids)
        assert record.settings["chat_template_sha256"]
    again = generate(tiny_model, tokenizer, TASKS[1:], params, seed=42, identity={"id": "tiny"})
    assert [r.explanations for r in again] == [r.explanations for r in records[1:]]


def test_rows_that_stop_early_leave_the_batch_without_disturbing_the_others(tiny_model, tokenizer):
    prompts = [chat_ids(tokenizer, decision_conversation(t)) for t in TASKS]
    free = sample(tiny_model, prompts, [5, 6, 7], 10, 0.7, 0.9, set(), tokenizer.pad_token_id)
    stop = free[0][2]  # row 0 stops after at most two tokens; the others run on
    batch = sample(tiny_model, prompts, [5, 6, 7], 10, 0.7, 0.9, {stop}, tokenizer.pad_token_id)
    alone = [sample(tiny_model, [p], [s], 10, 0.7, 0.9, {stop}, tokenizer.pad_token_id)[0]
             for p, s in zip(prompts, [5, 6, 7])]
    assert batch == alone
    assert len(batch[0]) <= 2 and stop not in batch[0]
    assert max(len(b) for b in batch[1:]) > 2
