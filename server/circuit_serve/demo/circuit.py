"""Does attribution find the circuit we planted? The three numbers of the demo manifest.

On the held-out sentence of every fact that the model answers correctly (greedy):

1. Fact selectivity. Feature (layer, f) is *selective for fact j* when its mean activation at the
   final position (where the answer is predicted) of prompts about j is at least 5x its mean there
   on the other facts' prompts (prompts: every training, held-out and near frame of every fact).
2. Circuit recovery. With this project's attribution engine (`circuit_serve.tracing`), build the
   pruned graph of the prompt and walk the answer logit's strongest incoming path: from the logit,
   repeatedly step to the kept incoming edge of largest weight until an embedding or error node.
   The prompt is *recovered* when that path runs through a feature at the final position that is
   selective for the prompt's fact and whose strongest input is the embedding node of the entity
   (country) token. `circuit_recovery_rate` = recovered / prompts. (The manifest also reports a
   looser diagnostic, `circuit_recovery_rate_via_path`: the path ends at the entity's embedding
   and runs through such a feature, with other features allowed in between.)
3. Ablation. In the real model, remove (subtract the decoder write of) every feature active at the
   final position that is selective for the prompt's fact, recomputing their activations in the
   ablated forward pass. The prompt *depends* on them when the greedy answer changes or its
   probability at least halves. `ablation_dependence_rate` = dependent / prompts;
   `ablation_control_rate` is the same with as many random other active features of the prompt
   (any layer and position after BOS).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuit_serve.demo.activations import mlp_inputs
from circuit_serve.demo.data import Prompt, World
from circuit_serve.demo.transcoders import Transcoder, load_transcoders

SELECTIVITY_RATIO = 5.0
SELECTIVITY_KINDS = ("train", "heldout_sentence", "near")


@dataclass
class CircuitResult:
    n_prompts: int = 0
    recovered: int = 0  # direct test
    recovered_via_path: int = 0
    dependent: int = 0
    control: int = 0
    per_prompt: list[dict] = field(default_factory=list)

    def rates(self) -> dict[str, float]:
        n = max(self.n_prompts, 1)
        return {
            "circuit_recovery_rate": round(self.recovered / n, 4),
            "circuit_recovery_rate_via_path": round(self.recovered_via_path / n, 4),
            "ablation_dependence_rate": round(self.dependent / n, 4),
            "ablation_control_rate": round(self.control / n, 4),
        }


def _ids(prompt: Prompt, vocab: dict[str, int]) -> list[int]:
    return [vocab["<bos>"]] + [vocab[w] for w in prompt.words]


@torch.no_grad()
def final_activations(model, tcs: list[Transcoder], rows: list[list[int]]) -> torch.Tensor:
    """Feature activations at the last position of each row: `(n_rows, L, d_tc)`."""
    last = torch.tensor([len(r) - 1 for r in rows]).cumsum(0) - 1  # index of each row's last position
    return torch.stack([tc.encode(x[last]) for tc, x in zip(tcs, mlp_inputs(model, rows))], dim=1)


@torch.no_grad()
def prompt_activations(model, tcs: list[Transcoder], ids: list[int]) -> torch.Tensor:
    """Feature activations `(L, P, d_tc)` of one prompt; position 0 (BOS) is zero, as in graphs."""
    acts = torch.stack([tc.encode(x) for tc, x in zip(tcs, mlp_inputs(model, [ids]))])  # (L, P-1, F)
    return torch.cat([torch.zeros_like(acts[:, :1]), acts], dim=1)


def fact_selectivity(model, tcs: list[Transcoder], world: World, vocab: dict[str, int]) -> torch.Tensor:
    """`(n_facts, L, d_tc)` bool: feature selective for the fact (step 1)."""
    prompts = [p for kind in SELECTIVITY_KINDS for p in world.prompts(kind)]
    acts = final_activations(model, tcs, [_ids(p, vocab) for p in prompts])  # (P, L, F)
    fact = torch.tensor([p.fact.index for p in prompts])
    n_facts = len(world.facts)
    sums = torch.zeros(n_facts, *acts.shape[1:]).index_add_(0, fact, acts)  # (J, L, F)
    counts = torch.bincount(fact, minlength=n_facts).float()[:, None, None]
    own = sums / counts
    other = (sums.sum(0, keepdim=True) - sums) / (len(prompts) - counts)
    return (own > 0) & (own >= SELECTIVITY_RATIO * other)


def strongest_path(graph, pruned, answer_id: int) -> list[int]:
    """Node indices from the answer logit back along the strongest kept incoming edges."""
    hits = torch.nonzero(graph.logit_token_ids == answer_id).flatten()
    if len(hits) == 0:
        return []
    M = graph.compact_adjacency() * pruned.edge_mask  # (F + K, F + E + T)
    F = graph.n_selected
    row = F + int(hits[0])
    path = [graph.logit_offset + int(hits[0])]
    while True:
        w, col = M[row].max(0)
        if w <= 0:
            return path
        path.append(int(col))
        if col >= F:  # error or embedding: the path ends
            return path
        row = int(col)


def path_verdict(graph, path: list[int], entity_pos: int, selective: torch.Tensor) -> dict[str, bool]:
    """Step 2's tests on one walked path; `selective` is `(L, d_tc)` for the prompt's fact.

    `direct`: a selective final-position feature on the path has the entity's embedding as its
    strongest input (the next node). `via_path`: the path ends at the entity's embedding and runs
    through a selective final-position feature (possibly with features in between).
    """
    nodes = [graph.node(n) for n in path]  # (kind, layer, pos, index)
    entity = ("embedding", -1, entity_pos)
    on_path = [
        i
        for i, (kind, layer, pos, f) in enumerate(nodes)
        if kind == "feature" and pos == graph.n_pos - 1 and bool(selective[layer, f])
    ]
    direct = any(i + 1 < len(nodes) and nodes[i + 1][:3] == entity for i in on_path)
    via_path = bool(on_path) and nodes[-1][:3] == entity
    return {"direct": direct, "via_path": via_path}


@contextmanager
def ablate(model, tcs: list[Transcoder], features: list[tuple[int, int, int]]):
    """Subtract the decoder writes of `features` [(layer, pos, f)] in every forward pass.

    Activations are recomputed from the (already ablated) transcoder input of that forward pass.
    """
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for layer, pos, f in features:
        by_layer.setdefault(layer, []).append((pos, f))
    x_mid: dict[int, torch.Tensor] = {}
    handles = []
    for li, pf in by_layer.items():
        layer = model.model.layers[li]
        pos = torch.tensor([p for p, _ in pf])
        feat = torch.tensor([f for _, f in pf])

        def keep_input(m, args, li=li):
            x_mid[li] = args[0]  # (B, P, d)

        def remove(m, args, out, li=li, pos=pos, feat=feat):
            tc = tcs[li]
            a = tc.encode(x_mid[li][:, pos])  # (B, n, d_tc)
            write = a[:, torch.arange(len(feat)), feat][..., None] * tc.W_dec[feat]  # (B, n, d)
            out = out.clone()
            out.index_add_(1, pos, -write)
            return out

        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(keep_input))
        handles.append(layer.mlp.register_forward_hook(remove))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def answer_prob(model, ids: list[int], answer: int) -> tuple[float, bool]:
    """(probability of `answer`, whether it is the greedy choice) after `ids`."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return logits.softmax(-1)[answer].item(), int(logits.argmax()) == answer


def _breaks(model, tcs, features, ids, answer, p0) -> bool:
    if not features:
        return False
    with ablate(model, tcs, features):
        p, top = answer_prob(model, ids, answer)
    return (not top) or p <= 0.5 * p0


def measure_circuit(
    model_dir: str | Path, transcoder_dir: str | Path, *, seed: int = 0, limit: int | None = None
) -> CircuitResult:
    """Steps 1-3 on the held-out sentences (the first `limit` facts when given)."""
    from circuit_serve.tracing import ReplacementModel
    from circuit_serve.tracing import load_transcoders as engine_transcoders

    torch.manual_seed(seed)
    world = World(seed)
    rm = ReplacementModel.from_pretrained(
        model_dir,
        engine_transcoders(transcoder_dir, dtype=torch.float32, device="cpu"),
        dtype=torch.float32,
        device="cpu",
    )
    model, vocab = rm.model, rm.tokenizer.get_vocab()
    tcs = load_transcoders(transcoder_dir)
    selective = fact_selectivity(model, tcs, world, vocab)  # (J, L, F)
    rng = random.Random(seed)
    result = CircuitResult()
    for p in world.prompts("heldout_sentence")[:limit]:
        ids, answer = _ids(p, vocab), vocab[p.answer]
        p0, correct = answer_prob(model, ids, answer)
        if not correct:
            continue
        result.n_prompts += 1
        graph = rm.attribute(ids)
        path = strongest_path(graph, graph.prune(), answer)
        entity_pos = ids.index(vocab[p.fact.country])
        verdict = path_verdict(graph, path, entity_pos, selective[p.fact.index])

        active = prompt_activations(model, tcs, ids) > 0  # (L, P, F)
        target = torch.zeros_like(active)  # selective for this fact, at the final position
        target[:, -1] = selective[p.fact.index]
        chosen = [tuple(x) for x in torch.nonzero(active & target).tolist()]
        others = [tuple(x) for x in torch.nonzero(active & ~target).tolist()]
        control = rng.sample(others, min(len(chosen), len(others)))
        dep = _breaks(model, tcs, chosen, ids, answer, p0)
        ctl = _breaks(model, tcs, control, ids, answer, p0)

        result.recovered += verdict["direct"]
        result.recovered_via_path += verdict["via_path"]
        result.dependent += dep
        result.control += ctl
        result.per_prompt.append(
            {
                "prompt": p.text,
                "answer": p.answer,
                "recovered": verdict["direct"],
                "recovered_via_path": verdict["via_path"],
                "path": [list(graph.node(n)) for n in path],
                "n_selective_active": len(chosen),
                "dependent": dep,
                "control": ctl,
            }
        )
    return result
