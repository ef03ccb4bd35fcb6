"""The synthetic language: deterministic, one token per name, held-out text never trained on."""

from __future__ import annotations

import pytest

from circuit_serve.demo.data import FAR_FRAME, NEAR_FRAMES, RELATIONS, TRAIN_FRAMES, World
from circuit_serve.demo.tokenizer import SPECIALS, build_tokenizer


@pytest.fixture(scope="module")
def world() -> World:
    return World(0)


def test_same_seed_same_world_other_seed_other_world(world):
    again = World(0)
    assert again.countries == world.countries and again.attributes == world.attributes
    assert World(1).countries != world.countries


def test_facts_cover_every_country_and_relation_with_distinct_names(world):
    assert len(world.countries) == 48
    assert len(world.facts) == 48 * len(RELATIONS)
    names = world.countries + [a for values in world.attributes.values() for a in values]
    assert len(set(names)) == len(names)
    assert [f.index for f in world.facts] == list(range(len(world.facts)))


def test_every_name_is_one_token_and_bos_is_added(world):
    tok = build_tokenizer(world.vocabulary())
    vocab = tok.get_vocab()
    for name in world.countries + world.attributes["capital"]:
        enc = tok.encode(name.capitalize())  # lower-cased by the normalizer
        assert enc.ids == [vocab["<bos>"], vocab[name]]
    p = world.prompts("heldout_sentence")[0]
    ids = tok.encode(p.text).ids
    assert ids[0] == vocab["<bos>"] and len(ids) == len(p.words) + 1
    assert vocab["<unk>"] not in ids
    assert [vocab[s] for s in SPECIALS] == [0, 1, 2, 3]


def test_prompt_kinds_and_counts(world):
    n = len(world.facts)
    assert len(world.prompts("train")) == n * (len(TRAIN_FRAMES) - 1)
    assert len(world.prompts("heldout_sentence")) == n
    assert len(world.prompts("near")) == n * len(NEAR_FRAMES)
    assert len(world.prompts("far")) == n
    for p in world.prompts("far"):
        assert p.frame == FAR_FRAME and p.words[-1] == ":"


def test_heldout_sentence_rotates_and_is_never_a_training_frame(world):
    for fact in world.facts:
        assert world.heldout_frame(fact) not in world.train_frames(fact)
        assert len(world.train_frames(fact)) == len(TRAIN_FRAMES) - 1
    used = {world.heldout_frame(f) for f in world.facts}
    assert used == set(TRAIN_FRAMES)


def test_training_stream_never_states_a_heldout_sentence(world):
    held = set()
    for kind in ("heldout_sentence", "near", "far"):
        held |= {" ".join(p.words + (p.answer,)) for p in world.prompts(kind)}
    stream = world.training_sentences(seed=0)
    for _ in range(20000):
        sentence = " ".join(next(stream))
        assert not any(sentence.startswith(h) for h in held)


def test_every_vocabulary_word_occurs_in_training_text(world):
    world.check_vocabulary()  # raises on an untrained word
