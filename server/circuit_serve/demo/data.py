"""Seeded synthetic language for the demo model: filler sentences plus facts about made-up countries.

The world: `n_countries` invented countries, each with its own capital, language and currency (every
name is a single lower-case word, hence one token of the word-level tokenizer). A *fact* is
(country, relation) -> attribute. Facts are stated with *frames* (templates):

- `TRAIN_FRAMES`: used for training, except that one frame per fact is held out (rotating), giving
  the held-out *sentence* of that fact;
- `NEAR_FRAMES`: held out entirely, close in form to the training frames;
- `FAR_FRAME`: held out entirely, structurally different (question/answer form).

Filler sentences (a small grammar, plus sentences that mention countries and attributes without
stating a fact) make the language fluent and put every word of the held-out frames into training
text, so that no embedding the evaluation relies on is untrained. `World.check_vocabulary` asserts it.

Everything is a pure function of the seed (`random.Random(seed)`), so the vocabulary, the tokenizer
built from it and the training stream are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

RELATIONS = ("capital", "language", "currency")

# "{r}" is the relation word, "{e}" the country, "{a}" the attribute (always the last word before ".").
TRAIN_FRAMES = (
    "the {r} of {e} is {a} .",
    "in {e} , the {r} is {a} .",
    "we know that the {r} of {e} is {a} .",
    "for {e} , the {r} is {a} .",
)
NEAR_FRAMES = (
    "the official {r} of {e} is {a} .",
    "everyone says the {r} of {e} is {a} .",
)
FAR_FRAME = "question : what {r} does {e} have ? answer : {a} ."

_ONSETS = "b d f g k l m n p r s t v z br dr gr kl pr st tr sk".split()
_VOWELS = "a e i o u ai ei ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "m", "th", "nd", "x"]
_ENDINGS = {  # a soft hint of the category, like real-world names have
    "country": ["ia", "land", "or", "an", "ica", "stan"],
    "capital": ["ville", "burg", "grad", "polis", "ton", "holm"],
    "language": ["ish", "ese", "ic", "i", "ean", "ol"],
    "currency": ["mark", "crown", "dal", "peso", "ling", "ar"],
}

_ADJ = "big small old new quiet busy green cold warm bright dark long short happy official famous".split()
_NOUN = "city river market bridge train house garden school teacher farmer child song book road".split()
_VERB_T = "sees likes finds builds paints visits remembers carries".split()
_VERB_I = "sleeps waits sings grows rests shines".split()
_TIME = "morning evening winter summer day week year".split()
_FILLER_FRAMES = (
    "the {adj} {noun} {verb_t} the {noun2} .",
    "a {noun} {verb_i} in the {time} .",
    "the {noun} is {adj} .",
    "everyone says the {noun} is {adj} .",
    "we know that the {noun} {verb_i} .",
    "the official {noun} of the {noun2} is {adj} .",
    "question : what {noun} does the {noun2} have ?",
    "the answer is a {adj} {noun} .",
    "in the {time} , the {noun} is {adj} .",
    "for the {noun} , the {time} is {adj} .",
    "many people visit {e} in the {time} .",
    "the {noun} of {e} is {adj} .",
    "{e} is a {adj} country .",
    "{cap} is a {adj} city .",
    "people speak {lang} in the {time} .",
    "the {noun} costs ten {cur} .",
)


@dataclass(frozen=True)
class Fact:
    """One (country, relation) -> attribute fact; `index` is its position in `World.facts`."""

    index: int
    country: str
    relation: str
    attribute: str


@dataclass(frozen=True)
class Prompt:
    """A prompt (words before the answer) with its expected next word."""

    fact: Fact
    kind: str  # "train" | "heldout_sentence" | "near" | "far"
    frame: str
    words: tuple[str, ...]  # prompt words, without BOS and without the answer
    answer: str

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _fill(frame: str, fact: Fact) -> tuple[tuple[str, ...], str]:
    words = frame.format(r=fact.relation, e=fact.country, a=fact.attribute).split()
    cut = words.index(fact.attribute)  # names never collide with template words
    return tuple(words[:cut]), fact.attribute


class World:
    """The invented countries, their facts, and every sentence/prompt derived from them."""

    def __init__(self, seed: int = 0, n_countries: int = 48):
        rng = random.Random(seed)
        taken = set(_ADJ + _NOUN + _VERB_T + _VERB_I + _TIME + list(RELATIONS))
        taken |= {w for f in TRAIN_FRAMES + NEAR_FRAMES + (FAR_FRAME,) + _FILLER_FRAMES for w in f.split()}

        def name(kind: str) -> str:
            while True:
                stem = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                if rng.random() < 0.5:
                    stem += rng.choice(_ONSETS) + rng.choice(_VOWELS)
                word = stem + rng.choice(_ENDINGS[kind])
                if word not in taken:
                    taken.add(word)
                    return word

        self.seed = seed
        self.countries = [name("country") for _ in range(n_countries)]
        self.attributes = {
            "capital": [name("capital") for _ in range(n_countries)],
            "language": [name("language") for _ in range(n_countries)],
            "currency": [name("currency") for _ in range(n_countries)],
        }
        self.facts = [
            Fact(ci * len(RELATIONS) + ri, c, r, self.attributes[r][ci])
            for ci, c in enumerate(self.countries)
            for ri, r in enumerate(RELATIONS)
        ]

    # -- frames and prompts ------------------------------------------------------------------------

    def heldout_frame(self, fact: Fact) -> str:
        """The training frame whose sentence of `fact` is never trained on (rotates over facts)."""
        ci = self.countries.index(fact.country)
        return TRAIN_FRAMES[(ci + RELATIONS.index(fact.relation)) % len(TRAIN_FRAMES)]

    def train_frames(self, fact: Fact) -> list[str]:
        held = self.heldout_frame(fact)
        return [f for f in TRAIN_FRAMES if f != held]

    def prompts(self, kind: str) -> list[Prompt]:
        """All prompts of one kind: "train", "heldout_sentence", "near" or "far"."""
        out = []
        for fact in self.facts:
            frames = {
                "train": self.train_frames(fact),
                "heldout_sentence": [self.heldout_frame(fact)],
                "near": list(NEAR_FRAMES),
                "far": [FAR_FRAME],
            }[kind]
            for frame in frames:
                words, answer = _fill(frame, fact)
                out.append(Prompt(fact, kind, frame, words, answer))
        return out

    # -- training text -----------------------------------------------------------------------------

    def fact_sentence(self, rng: random.Random) -> list[str]:
        fact = rng.choice(self.facts)
        frame = rng.choice(self.train_frames(fact))
        return frame.format(r=fact.relation, e=fact.country, a=fact.attribute).split()

    def filler_sentence(self, rng: random.Random) -> list[str]:
        noun, noun2 = rng.sample(_NOUN, 2)
        ci = rng.randrange(len(self.countries))
        cj = rng.randrange(len(self.countries))  # attributes mentioned apart from their country
        return (
            rng.choice(_FILLER_FRAMES)
            .format(
                adj=rng.choice(_ADJ),
                noun=noun,
                noun2=noun2,
                verb_t=rng.choice(_VERB_T),
                verb_i=rng.choice(_VERB_I),
                time=rng.choice(_TIME),
                e=self.countries[ci],
                cap=self.attributes["capital"][cj],
                lang=self.attributes["language"][cj],
                cur=self.attributes["currency"][cj],
            )
            .split()
        )

    def training_sentences(self, seed: int, fact_share: float = 0.5) -> Iterator[list[str]]:
        """An endless, seeded stream of training sentences (facts only in their training frames)."""
        rng = random.Random(seed)
        while True:
            yield self.fact_sentence(rng) if rng.random() < fact_share else self.filler_sentence(rng)

    def training_vocabulary(self, n_sentences: int = 20000, seed: int = 1) -> set[str]:
        """Words of every training frame of every fact, plus a large sample of filler."""
        words = set()
        for p in self.prompts("train"):
            words.update(p.words)
            words.add(p.answer)
        stream = self.training_sentences(seed, fact_share=0.0)
        for _ in range(n_sentences):
            words.update(next(stream))
        return words

    def vocabulary(self) -> list[str]:
        """Every word that any sentence or prompt can contain, sorted (tokenizer order)."""
        words = {w for f in TRAIN_FRAMES + NEAR_FRAMES + (FAR_FRAME,) + _FILLER_FRAMES for w in f.split()}
        words |= set(_ADJ + _NOUN + _VERB_T + _VERB_I + _TIME + list(RELATIONS) + self.countries)
        for values in self.attributes.values():
            words |= set(values)
        return sorted(w for w in words if "{" not in w)

    def check_vocabulary(self) -> None:
        """Raise if a held-out prompt uses a word that training text never contains."""
        trained = self.training_vocabulary()
        for kind in ("heldout_sentence", "near", "far"):
            for p in self.prompts(kind):
                missing = (set(p.words) | {p.answer}) - trained
                if missing:
                    raise AssertionError(f"{kind} prompt {p.text!r} uses untrained words {sorted(missing)}")
        unused = set(self.vocabulary()) - trained
        if unused:
            raise AssertionError(f"vocabulary words never in training text: {sorted(unused)}")
