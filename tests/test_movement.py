"""The training loop moves the model: held-out movement equals TRL's own eval logs, and a positive
control (chosen = the shorter explanation) is learnt by the tiny model through the project's own train()."""

import pytest

from pipelines.analysis.movement import changed_outputs, pair_tokens, policy_movement
from pipelines.core.config import TrainParams
from pipelines.stages.models import load_model
from pipelines.stages.train import train

WORDS = ("light heat water plant animal rock energy force gravity cell seed rain wind soil metal sound "
         "magnet moon star ice").split()


def preference_pairs(count: int, offset: int) -> list[dict]:
    """chosen: a short answer; rejected: the same start run on for many words (prompts differ per pair)."""
    pairs = []
    for i in range(offset, offset + count):
        topic = f"{WORDS[i % len(WORDS)]} and {WORDS[(3 * i + 1) % len(WORDS)]}"
        prompt = [{"role": "user", "content": f"Question {i}: what links {topic}?"}]
        short = f"Because of {WORDS[(5 * i) % len(WORDS)]}."
        long = short[:-1] + " " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(24)) + "."
        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": short}],
                      "rejected": [{"role": "assistant", "content": long}]})
    return pairs


@pytest.fixture
def tiny(tiny_model_dir):
    from pipelines.core.config import ModelParams

    model, tokenizer, _ = load_model(ModelParams(id=str(tiny_model_dir), device="cpu"))
    return model, tokenizer


def test_heldout_movement_equals_trl_eval_logs_and_the_positive_control_is_learnt(tiny, tmp_path):
    model, tokenizer = tiny
    train_pairs, eval_pairs = preference_pairs(32, 0), preference_pairs(24, 100)
    settings = TrainParams(algorithms=("dpo",), beta=0.5, learning_rate=5e-3, epochs=3, batch_size=8,
                           max_length=256, lora_r=8, lora_alpha=16)
    trainer = train("dpo", model, tokenizer, train_pairs, eval_pairs, settings, tmp_path, seed=0)
    trainer.args.per_device_eval_batch_size = len(eval_pairs)  # one batch: TRL's batch means are pair means
    logged = trainer.evaluate()
    moved = policy_movement(trainer.model, tokenizer, eval_pairs, settings.beta, settings.max_length)
    assert moved["pairs"] == 24
    assert moved["reward_accuracy"] == pytest.approx(logged["eval_rewards/accuracies"], abs=1e-6)
    assert moved["reward_margin"] == pytest.approx(logged["eval_rewards/margins"], rel=1e-3, abs=1e-4)
    assert settings.beta * moved["logp_shift_chosen"] == pytest.approx(logged["eval_rewards/chosen"], rel=1e-3,
                                                                       abs=1e-4)
    # the positive control: held out, the shorter answer now wins well beyond chance, by moving the policy
    assert moved["reward_accuracy"] >= 0.9 and moved["reward_accuracy_p"] < 0.001
    assert moved["reward_margin"] > 0 and moved["logp_shift_rejected"] < moved["logp_shift_chosen"]
    assert moved["kl_per_token"] > 0


def test_an_untrained_adapter_has_not_moved(tiny):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    fresh = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))  # LoRA's B starts at zero: the identity
    moved = policy_movement(fresh, tokenizer, preference_pairs(6, 0), beta=0.5, max_length=256)
    assert moved["reward_accuracy"] == 0 and moved["reward_accuracy_p"] == 1
    assert moved["logp_shift_chosen"] == 0 and moved["kl_per_token"] == pytest.approx(0, abs=1e-9)


def test_pair_tokens_split_where_trl_does(tokenizer):
    pair = preference_pairs(1, 0)[0]
    ids, start = pair_tokens(tokenizer, pair["prompt"], pair["chosen"], 1024)
    prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    assert ids[:start] == prompt[:start] and start == len(prompt)
    assert "Because of" in tokenizer.decode(ids[start:])


def test_changed_outputs_counts_token_differences():
    def generation(task, decision, explanations):
        return {"task": {"id": task}, "decision_ids": decision, "explanation_ids": explanations}

    base = [generation("a", [1], [[1, 2], [3]]), generation("b", [2], [[4], [5]])]
    tuned = [generation("a", [1], [[1, 2], [9]]), generation("b", [7], [[4], [5]]), generation("c", [1], [[1]])]
    changed = changed_outputs(base, tuned)
    assert changed == {"decisions": 2, "decisions_changed": 0.5, "explanations": 4, "explanations_changed": 0.25}
