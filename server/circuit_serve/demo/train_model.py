"""Train the demo Llama on the synthetic language and pick the checkpoint by held-out evaluation.

Steps:
1. Build the world (`data.World`) and the word-level tokenizer over its vocabulary.
2. Build a small Llama (tied embeddings; head_dim 32 as vLLM's CPU attention requires; float32).
3. Train next-token prediction on packed sequences `<bos> sentence sentence ...` (seeded stream).
4. From `select_from` on, every `eval_every` steps, measure greedy accuracy on the held-out prompts
   and keep the state with the best held-out sentence + near template accuracy.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuit_serve.demo.data import RELATIONS, Prompt, World

log = logging.getLogger(__name__)


@dataclass
class ModelSettings:
    """Architecture and optimisation of the demo model."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4  # head_dim = 32
    d_mlp: int = 512
    max_positions: int = 512
    steps: int = 1000
    batch: int = 64  # sequences per step
    seq_len: int = 32  # tokens per sequence, BOS included
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    fact_share: float = 0.6  # share of training sentences that state a fact
    eval_every: int = 100
    select_from: int = 500  # first step considered for checkpoint selection


def build_model(settings: ModelSettings, vocab_size: int, special_ids: dict[str, int], seed: int):
    """A freshly initialised `LlamaForCausalLM` (float32, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=settings.d_model,
        intermediate_size=settings.d_mlp,
        num_hidden_layers=settings.n_layers,
        num_attention_heads=settings.n_heads,
        num_key_value_heads=settings.n_heads,
        head_dim=settings.d_model // settings.n_heads,
        max_position_embeddings=settings.max_positions,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        bos_token_id=special_ids["<bos>"],
        eos_token_id=special_ids["<eos>"],
        pad_token_id=special_ids["<pad>"],
    )
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def pack(world: World, vocab: dict[str, int], n_rows: int, seq_len: int, stream) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_rows` rows `<bos> sentence sentence ...` cut at `seq_len`, from a sentence stream.

    Returns (ids `(n_rows, seq_len)`, answer_next `(n_rows, seq_len)` bool: the next token is the
    attribute of a fact sentence).
    """
    attributes = {a for values in world.attributes.values() for a in values}
    rows, marks = [], []
    for _ in range(n_rows):
        row, mark = [vocab["<bos>"]], [False]
        while len(row) < seq_len:
            words = next(stream)
            is_fact = any(r in words for r in RELATIONS)
            row.extend(vocab[w] for w in words)
            mark.extend(is_fact and nxt in attributes for nxt in words[1:] + ["."])
        rows.append(row[:seq_len])
        marks.append(mark[:seq_len])
    return torch.tensor(rows), torch.tensor(marks)


def batches(world: World, vocab: dict[str, int], settings: ModelSettings, seed: int):
    """Endless `(batch, seq_len)` id tensors of the seeded training stream."""
    stream = world.training_sentences(seed, settings.fact_share)
    while True:
        yield pack(world, vocab, settings.batch, settings.seq_len, stream)[0]


@torch.no_grad()
def prompt_logits(model, prompts: list[Prompt], vocab: dict[str, int]) -> torch.Tensor:
    """Next-token logits `(len(prompts), vocab)` after `<bos> prompt` (prompts batched by length)."""
    out = torch.empty(len(prompts), model.config.vocab_size)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p.words), []).append(i)
    for idx in by_len.values():
        ids = torch.tensor([[vocab["<bos>"]] + [vocab[w] for w in prompts[i].words] for i in idx])
        out[idx] = model(input_ids=ids).logits[:, -1].float()
    return out


def accuracy(model, prompts: list[Prompt], vocab: dict[str, int]) -> float:
    """Share of prompts whose greedy next token is the expected answer."""
    pred = prompt_logits(model, prompts, vocab).argmax(-1)
    gold = torch.tensor([vocab[p.answer] for p in prompts])
    return (pred == gold).float().mean().item()


def evaluate(model, world: World, vocab: dict[str, int]) -> dict[str, float]:
    """The three held-out accuracies (plus training-frame accuracy) under their manifest keys."""
    was_training = model.training
    model.eval()
    result = {
        "train_prompt_accuracy": accuracy(model, world.prompts("train"), vocab),
        "heldout_sentence_accuracy": accuracy(model, world.prompts("heldout_sentence"), vocab),
        "heldout_template_accuracy": accuracy(model, world.prompts("near"), vocab),
        "far_template_accuracy": accuracy(model, world.prompts("far"), vocab),
    }
    model.train(was_training)
    return result


def _lr_at(step: int, settings: ModelSettings) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    t = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_model(world: World, vocab: dict[str, int], settings: ModelSettings, seed: int):
    """Train; return (best model, its evaluation, its step, the list of all evaluations)."""
    model = build_model(settings, len(vocab), vocab, seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
    )
    random.seed(seed)
    data = batches(world, vocab, settings, seed)
    history: list[dict] = []
    best = (-1.0, None, None, -1)  # (score, state, evaluation, step)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, settings.steps + 1):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step - 1, settings)
        ids = next(data)  # (B, T)
        logits = model(input_ids=ids[:, :-1]).logits  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % settings.eval_every == 0 or step == settings.steps:
            ev = evaluate(model, world, vocab)
            ev.update(step=step, loss=round(loss.item(), 4), seconds=round(time.perf_counter() - t0, 1))
            history.append(ev)
            log.info("step %d %s", step, ev)
            score = ev["heldout_sentence_accuracy"] + ev["heldout_template_accuracy"]
            if step >= settings.select_from and score >= best[0]:
                best = (score, copy.deepcopy(model.state_dict()), ev, step)
    model.load_state_dict(best[1])
    model.eval()
    return model, best[2], best[3], history
