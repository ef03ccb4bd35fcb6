"""Feature labels for the demo transcoders, by a stated rule on measured selectivities.

The labelling corpus is every fact prompt (train, held-out, near and far frames) plus rows of the
training stream. Each non-BOS position gets its *token*, the token *before* it, the kind of the
word *after* it (a country, a capital, a language, a currency, or another word), and, when it is an
*answer slot* (the next word is a fact's attribute: the final position of a fact prompt, or the
same place in a stream fact sentence), its *fact* (country, relation).

Measured per feature (activations of the transcoder at each position):

- `answer_share`: the share of the feature's total activation that falls on answer slots;
- on answer slots, the mean activation per fact, per entity (country: all its facts) and per
  relation (capital, language, currency), each turned into *shares* (mean on the group / sum of
  the means over all groups of that kind, so 1 means it fires on that group alone and a flat
  feature gets 1/144, 1/48 or 1/3);
- over all positions, the same shares per token, per previous token and per kind of next word.

The rule, first match wins:

1. answer-slot feature (`answer_share >= 0.5`):
   - `fact: capital of veigrouan` when one fact holds at least half the share (FACT_SHARE);
   - `entity: veigrouan` when one country does (ENTITY_SHARE);
   - `relation: capital of` (or `relation: capital/language of`) naming the fewest relations whose
     shares reach RELATION_COVER, when that is fewer than all three;
   - `answer slot: any fact` otherwise.
   A relation or answer-slot label adds `(mostly veigrouan, klesstoica)` for the countries that
   each hold at least MOSTLY_ENTITY of the share (7x a flat feature's), at most three.
2. otherwise: `before: a country` (a position pattern: the next word is a country, capital,
   language or currency name) when that kind of next word holds at least BEFORE_SHARE (a flat
   feature: 1/5); else `token: the` when one token holds at least TOKEN_SHARE; `after: of` when one
   previous token does; else `tokens: is, have, we` (the three largest).

Every entry keeps its numbers: `{layer, index, label, kind, selectivity, answer_share, top}`, where
`selectivity` is the share behind the label and `top` the largest share of each kind. Features that
never fire on the corpus get no entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from circuit_serve.demo.activations import mlp_inputs
from circuit_serve.demo.data import RELATIONS, World
from circuit_serve.demo.transcoders import Transcoder

ANSWER_SLOT_SHARE = 0.5
FACT_SHARE = 0.5
ENTITY_SHARE = 0.5
RELATION_COVER = 0.8
MOSTLY_ENTITY = 0.15
TOKEN_SHARE = 0.5
BEFORE_SHARE = 0.8
NEXT_KINDS = ("other word", "country", "capital", "language", "currency")  # index 0 never labels
PROMPT_KINDS = ("train", "heldout_sentence", "near", "far")


@dataclass
class Corpus:
    """Rows (BOS first) and, for every non-BOS position in row order, what it is."""

    rows: list[list[int]]
    token: torch.Tensor  # (N,) token id at the position
    prev: torch.Tensor  # (N,) token id before it
    fact: torch.Tensor  # (N,) fact index when an answer slot, else -1
    next_kind: torch.Tensor  # (N,) index into NEXT_KINDS of the word after it (0 when unknown)
    vocab_size: int


def corpus(world: World, vocab: dict[str, int], stream_rows: torch.Tensor, stream_answer: torch.Tensor) -> Corpus:
    """All fact prompts, then the stream rows (`stream_answer` marks their answer slots, as `pack` does)."""
    fact_of_attribute = {vocab[f.attribute]: f.index for f in world.facts}
    kind_of = {vocab[c]: 1 for c in world.countries}
    for relation, values in world.attributes.items():
        kind_of.update({vocab[a]: NEXT_KINDS.index(relation) for a in values})
    rows, fact, after = [], [], []
    for kind in PROMPT_KINDS:
        for p in world.prompts(kind):
            ids = [vocab["<bos>"]] + [vocab[w] for w in p.words]
            rows.append(ids)
            fact.extend([-1] * (len(p.words) - 1) + [p.fact.index])
            after.extend(ids[2:] + [vocab[p.answer]])
    for r, marks in zip(stream_rows.tolist(), stream_answer.tolist()):
        rows.append(r)
        nxt = r[2:] + [-1]  # the word after the row's last position is not known
        fact.extend(fact_of_attribute.get(n, -1) if m else -1 for n, m in zip(nxt, marks[1:]))
        after.extend(nxt)
    token = torch.tensor([t for r in rows for t in r[1:]])
    prev = torch.tensor([t for r in rows for t in r[:-1]])
    next_kind = torch.tensor([kind_of.get(t, 0) for t in after])
    return Corpus(rows, token, prev, torch.tensor(fact), next_kind, len(vocab))


def _group_shares(acts: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(G, F) share of each group: mean activation on it over the sum of the groups' means."""
    sums = torch.zeros(n_groups, acts.shape[1], dtype=torch.float64).index_add_(0, group, acts.double())
    counts = torch.bincount(group, minlength=n_groups).double().clamp(min=1)[:, None]
    means = sums / counts
    return means / means.sum(0, keepdim=True).clamp(min=1e-30)


@dataclass
class Selectivity:
    """Shares of one layer's features, each (groups, F); see the module docstring."""

    total: torch.Tensor  # (F,) summed activation over the corpus
    answer_share: torch.Tensor  # (F,)
    fact: torch.Tensor  # (n_facts, F)
    entity: torch.Tensor  # (n_countries, F)
    relation: torch.Tensor  # (3, F)
    token: torch.Tensor  # (vocab, F)
    prev: torch.Tensor  # (vocab, F)
    before: torch.Tensor  # (len(NEXT_KINDS), F)


def measure(acts: torch.Tensor, c: Corpus, n_facts: int) -> Selectivity:
    """Shares of every feature from its activations `acts` (N, F) on the corpus positions."""
    slot = c.fact >= 0
    total = acts.double().sum(0)  # (F,)
    at_slots = acts[slot]  # (S, F)
    facts = c.fact[slot]
    n_rel = len(RELATIONS)
    return Selectivity(
        total=total,
        answer_share=at_slots.double().sum(0) / total.clamp(min=1e-30),
        fact=_group_shares(at_slots, facts, n_facts),
        entity=_group_shares(at_slots, facts // n_rel, n_facts // n_rel),
        relation=_group_shares(at_slots, facts % n_rel, n_rel),
        token=_group_shares(acts, c.token, c.vocab_size),
        prev=_group_shares(acts, c.prev, c.vocab_size),
        before=_group_shares(acts, c.next_kind, len(NEXT_KINDS)),
    )


def _fact_name(world: World, j: int) -> str:
    f = world.facts[j]
    return f"{f.relation} of {f.country}"


def label_one(s: Selectivity, f: int, world: World, words: list[str]) -> dict:
    """The rule of the module docstring applied to feature `f`: {label, kind, selectivity, answer_share, top}."""
    fact_v, fact_i = s.fact[:, f].max(0)
    ent_v, ent_i = s.entity[:, f].max(0)
    rel = s.relation[:, f]
    tok_v, tok_i = s.token[:, f].max(0)
    prev_v, prev_i = s.prev[:, f].max(0)
    before_v, before_i = s.before[1:, f].max(0)  # named kinds only
    answer = float(s.answer_share[f])
    top = {
        "fact": [_fact_name(world, int(fact_i)), round(float(fact_v), 4)],
        "entity": [world.countries[int(ent_i)], round(float(ent_v), 4)],
        "relation": [RELATIONS[int(rel.argmax())], round(float(rel.max()), 4)],
        "token": [words[int(tok_i)], round(float(tok_v), 4)],
        "after": [words[int(prev_i)], round(float(prev_v), 4)],
        "before": [NEXT_KINDS[int(before_i) + 1], round(float(before_v), 4)],
    }

    def mostly() -> str:
        shares = s.entity[:, f]
        idx = [int(i) for i in torch.argsort(shares, descending=True)[:3] if shares[i] >= MOSTLY_ENTITY]
        return f" (mostly {', '.join(world.countries[i] for i in idx)})" if idx else ""

    if answer >= ANSWER_SLOT_SHARE:
        if fact_v >= FACT_SHARE:
            kind, label, sel = "fact", f"fact: {top['fact'][0]}", float(fact_v)
        elif ent_v >= ENTITY_SHARE:
            kind, label, sel = "entity", f"entity: {top['entity'][0]}", float(ent_v)
        else:
            order = torch.argsort(rel, descending=True).tolist()
            cover = torch.cumsum(rel[order], 0)
            n = int((cover < RELATION_COVER).sum()) + 1
            if n < len(RELATIONS):
                names = "/".join(RELATIONS[i] for i in order[:n])
                kind, label, sel = "relation", f"relation: {names} of" + mostly(), float(cover[n - 1])
            else:
                kind, label, sel = "answer_slot", "answer slot: any fact" + mostly(), answer
    elif before_v >= BEFORE_SHARE:
        kind, label, sel = "before", f"before: a {top['before'][0]}", float(before_v)
    elif tok_v >= TOKEN_SHARE:
        kind, label, sel = "token", f"token: {top['token'][0]}", float(tok_v)
    elif prev_v >= TOKEN_SHARE:
        kind, label, sel = "after", f"after: {top['after'][0]}", float(prev_v)
    else:
        best = torch.argsort(s.token[:, f], descending=True)[:3].tolist()
        kind, label, sel = "tokens", "tokens: " + ", ".join(words[i] for i in best), float(s.token[best, f].sum())
    return {"label": label, "kind": kind, "selectivity": round(sel, 4), "answer_share": round(answer, 4), "top": top}


@torch.no_grad()
def label_features(model, transcoders: list[Transcoder], c: Corpus, world: World, vocab: dict[str, int]) -> list[dict]:
    """`[{layer, index, label, kind, selectivity, answer_share, top}]` for every feature that fires on the corpus."""
    words = [""] * len(vocab)
    for w, i in vocab.items():
        words[i] = w
    out = []
    for li, x in enumerate(mlp_inputs(model, c.rows)):
        acts = transcoders[li].encode(x)  # (N, F)
        s = measure(acts, c, len(world.facts))
        for f in torch.nonzero(s.total > 0).flatten().tolist():
            out.append({"layer": li, "index": f, **label_one(s, f, world, words)})
    return out


def write_labels(labels: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps(labels, indent=1) + "\n")
