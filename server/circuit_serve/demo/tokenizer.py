"""Word-level tokenizer for the demo language: one token per word, BOS added by the post-processor.

Ids: `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, then the vocabulary in sorted order (so the file is a
pure function of the world's seed). Text is lower-cased and split into words and punctuation; the
decoder joins words with spaces and removes the space before punctuation.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def build_tokenizer(vocabulary: list[str]):
    """A `tokenizers.Tokenizer` over `vocabulary` (specials first)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(list(SPECIALS) + [w for w in vocabulary if w not in SPECIALS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def save_tokenizer(vocabulary: list[str], out_dir: str | Path):
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json; return the HF tokenizer."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(vocabulary),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        # `<unk>` stays an ordinary token: a prompt that starts with an unknown word must not look
        # as if it started with a special (BOS-like) token.
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    return fast
