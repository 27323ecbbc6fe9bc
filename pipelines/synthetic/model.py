"""The known-answer model: a small Llama trained here, from scratch, on the known-answer world.

    python -m pipelines.synthetic.build --params experiments/known_answer.yaml   # build (cached) and report

It answers through the cue (the decision turn names the object the asked attribute belongs to) and, asked
why, restates the cue with probability `p_faithful` and a distractor otherwise, so that sampling at the
usual temperature writes both kinds of explanation and every one of them has a known label. It has its own
word-level tokenizer and chat template, so generate / attribute / score / pair / train / evaluate run on it
unchanged (`model.id: synthetic:known-answer`).

From scratch, not as an adapter on SmolLM2: a forward of this model costs about a thousandth of SmolLM2's,
so the paper's LIME and KernelSHAP at 500 samples run over hundreds of decisions in minutes on a CPU, which
is what the instrument validation needs. The build is deterministic (one seed, one thread order), cached
under `model.cache_dir` by the digest of its recipe, and its weights' digest is recorded beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from pipelines.core.config import KnownAnswerModelParams, SyntheticParams
from pipelines.core.prompts import INSTRUCTION, WHY_QUESTION
from pipelines.core.records import Choice, Task, sha256
from pipelines.core.seeds import derive_seed
from pipelines.synthetic.world import ASKED, ATTRIBUTES, LETTERS, OBJECTS, QUESTION, make_question, question_text

SPECIAL = ["<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
RECIPE_VERSION = 4  # bump when the build changes what it makes


def words() -> list[str]:
    """Every word the world's conversations use, in a fixed order."""
    import re

    text = " ".join([INSTRUCTION, WHY_QUESTION, QUESTION, "The is", *LETTERS, *OBJECTS, *ATTRIBUTES, ". ) ? :"])
    seen: dict[str, None] = {}
    for word in re.findall(r"\w+|[^\w\s]+", text):
        seen.setdefault(word, None)
    return list(seen)


def fact_tokens() -> list[str]:
    """One token per fact ("cup is red"), for every object and attribute of the world."""
    return [f"{o} is {a}" for o in OBJECTS for a in ATTRIBUTES]


def pieces_pattern() -> str:
    """A fact first, else a word, else punctuation. With the fact as one token the lookup is one step of
    attention (asked attribute -> the fact token holding it -> its object): word by word, it needs two heads
    composed across layers, and 2-3 layer models trained here for up to 5,000 steps stayed at chance (0.21-0.28)
    on it, while one token per fact reached 0.96 held-out accuracy in 300 steps (docs/known-answer.md)."""
    return rf"\b(?:{'|'.join(OBJECTS)}) is (?:{'|'.join(ATTRIBUTES)})\b|\w+|[^\w\s]+"


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL, *words(), *fact_tokens()])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pieces_pattern()), behavior="removed", invert=True)
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins the pieces with single spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|end|>", additional_special_tokens=SPECIAL[2:5])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def decision_text(task: Task) -> str:
    """The decision the model learns: the asked attribute, then the cue's object ("red cup"; parse_answer reads
    the option it names). Naming the attribute first makes the object one attention step: at the object's
    position the current token is the attribute, which matches the one fact token holding it. Asked for the
    object alone, the model must first carry the attribute from the question to the answer position and only
    then query the facts; two heads that get no gradient until the other exists, and 2-layer models sat at
    chance for thousands of steps (docs/known-answer.md)."""
    asked = ASKED.search(task.question).group(1)
    return f"{asked} {next(c for c in task.choices if c.label == task.answer_label).text}"


def training_conversations(world: SyntheticParams, count: int, seed: int, stream: str) -> list[list[dict[str, str]]]:
    """Decision turn and why-turn of `count` questions from a stream of their own (never the bank's
    questions' stream); the explanation restates the cue with probability p_faithful, else a random distractor."""
    from pipelines.core.prompts import explanation_conversation

    rng = random.Random(derive_seed(seed, f"known-answer-training/{stream}"))
    conversations = []
    for _ in range(count):
        made = make_question(rng, world)
        facts, cue = made["facts"], made["cue"]
        task = Task(id="train", dataset="synthetic", split="train",
                    question=question_text(facts, facts[cue].attribute),
                    choices=[Choice(LETTERS[i], o) for i, o in enumerate(made["options"])],
                    answer_label=made["answer"])
        decision = decision_text(task)
        faithful = rng.random() < world.p_faithful
        stated = facts[cue] if faithful else rng.choice([f for i, f in enumerate(facts) if i != cue])
        conversation = [*explanation_conversation(task, decision), {"role": "assistant", "content": stated.sentence()}]
        conversations.append(conversation)
    return conversations


def encode(tokenizer, conversation: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and the loss mask: 1 on the assistant turns' tokens and their closing <|end|>."""
    ids, mask = [], []
    for message in conversation:
        piece = tokenizer(f"<|{message['role']}|>\n", add_special_tokens=False).input_ids
        content = tokenizer(f"{message['content']}<|end|>\n", add_special_tokens=False).input_ids
        ids += piece + content
        mask += [0] * len(piece) + [int(message["role"] == "assistant")] * len(content)
    return ids, mask


def recipe(world: SyntheticParams, seed: int) -> dict[str, Any]:
    return {"version": RECIPE_VERSION, "seed": seed, "world": world.model_dump(mode="json")}


def recipe_digest(world: SyntheticParams, seed: int) -> str:
    return hashlib.sha256(json.dumps(recipe(world, seed), sort_keys=True).encode()).hexdigest()


def build_model(tokenizer, spec: KnownAnswerModelParams):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=4 * spec.hidden,
                         num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                         num_key_value_heads=spec.heads, max_position_embeddings=512, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config)
    compose_fact_embeddings(model, tokenizer)
    return model


def compose_fact_embeddings(model, tokenizer) -> None:
    """Start each fact token's embedding as the sum of its object's and its attribute's word embeddings. The
    lookup then matches the attribute token against the fact tokens holding it, and copies the fact's object
    (the embeddings are tied, so the object's output row is its input row), from the first step. Each fact
    token appears in about one question in twenty-four; with independent random fact embeddings the same
    build reached 0.99 held-out accuracy at step 500 instead of 1.0 at step 300 (docs/known-answer.md)."""
    import torch

    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for fact in fact_tokens():
            thing, _, attribute = fact.split(" ")
            fact_id, thing_id, attribute_id = tokenizer.convert_tokens_to_ids([fact, thing, attribute])
            weight[fact_id] += weight[thing_id] + weight[attribute_id]


def fit(model, batches, spec: KnownAnswerModelParams, probe=None, log_every: int = 100) -> list[dict[str, float]]:
    """AdamW with linear warmup and cosine decay; the loss on the assistant turns only. `probe`: held-out
    (ids, attention, positions, answers), whose greedy decision accuracy is logged."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, spec.steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    history, started = [], time.perf_counter()
    model.train()
    for step in range(spec.steps):
        ids, mask, attention = batches(step)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % log_every == 0 or step == 0:
            entry = {"step": step + 1, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - started, 1)}
            if probe is not None:
                entry["decision_accuracy"] = decision_accuracy(model, probe)
                model.train()
            history.append(entry)
            print(f"known-answer model: {entry}", flush=True)
    model.eval()
    return history


def decision_accuracy(model, probe) -> float:
    import torch

    ids, attention, positions, answers = probe
    model.eval()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=attention).logits
    predicted = logits[torch.arange(len(ids)), positions - 1].argmax(-1)
    return round(float((predicted == answers).float().mean()), 4)


def make_probe(encoded: list[tuple[list[int], list[int]]], pad_id: int):
    """Held-out conversations as a batch, with the position of each decision's object (its second token, after
    the asked attribute) and that token."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in encoded])
    attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded])
    positions = torch.tensor([m.index(1) + 1 for _, m in encoded])
    return ids, attention, positions, ids[torch.arange(len(ids)), positions]


def batch_maker(world: SyntheticParams, tokenizer, seed: int):
    """Step -> a batch of fresh questions, the same for a step whatever ran before it: every question is seen
    once, so the model learns the lookup rather than the training set."""
    import torch

    pad_id = tokenizer.pad_token_id

    def batch(step: int):
        made = training_conversations(world, world.model.batch_size, seed, f"step-{step}")
        chosen = [encode(tokenizer, c) for c in made]
        width = max(len(ids) for ids, _ in chosen)
        ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in chosen])
        mask = torch.tensor([m + [0] * (width - len(m)) for _, m in chosen])
        attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chosen])
        return ids, mask, attention

    return batch


def build(world: SyntheticParams, seed: int, target: Path) -> dict[str, Any]:
    """Train and save the model into `target` (atomically); returns its identity."""
    import torch

    # one thread: the bytes then do not depend on the core count, and a build beside other work does not
    # spin OpenMP threads against it (two 2-thread processes on 2 cores ran 8x slower: benchmarks/backfill.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    held_out = [encode(tokenizer, c) for c in training_conversations(
        world.model_copy(update={"model": world.model.model_copy(update={"drill_share": 0.0})}), 256, seed, "probe")]
    model = build_model(tokenizer, world.model)
    started = time.perf_counter()
    history = fit(model, batch_maker(world, tokenizer, seed), world.model, make_probe(held_out, tokenizer.pad_token_id))
    partial = target.with_name(target.name + ".partial")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    identity = {"id": "synthetic:known-answer", "source": "synthetic", "recipe_sha256": recipe_digest(world, seed),
                "sha256": sha256(partial / "model.safetensors")}
    (partial / "pscb_identity.json").write_text(json.dumps(identity, indent=2))
    (partial / "pscb_training.json").write_text(json.dumps(
        {"recipe": recipe(world, seed), "seconds": round(time.perf_counter() - started, 1),
         "threads": 1, "history": history}, indent=2))
    torch.set_num_threads(threads)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    os.replace(partial, target)
    return identity


def known_answer_model(world: SyntheticParams, seed: int, cache_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The cached model folder for this world and seed, built first if missing."""
    target = Path(cache_dir).expanduser() / f"known-answer-{recipe_digest(world, seed)[:12]}"
    if not (target / "pscb_identity.json").exists():
        build(world, seed, target)
    return target, json.loads((target / "pscb_identity.json").read_text())
