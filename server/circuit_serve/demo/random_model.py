"""A small random-weight model in Hugging Face format, built offline and deterministically.

    build_demo_model("demo/model")                  # Llama, 2 layers, d_model 128
    build_demo_model("demo/gemma", arch="gemma2")   # Gemma-2 variant (tied embeddings)

The tokenizer is a byte-level BPE trained here, with the `tokenizers` library, on a
fixed built-in corpus, so the same call gives byte-identical files on any machine.
Shapes respect vLLM's CPU build: head_dim 64 (its attention supports only some head
sizes) and, for Gemma-2, tied input/output embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Arch = Literal["llama", "gemma2"]

# Model shape shared by both variants.
D_MODEL = 128
N_LAYERS = 2
N_HEADS = 2
N_KV_HEADS = 1
HEAD_DIM = 64  # vLLM CPU attention supports 32, 64, 80, ... only
D_MLP = 512
MAX_POSITIONS = 2048
VOCAB_TARGET = 1024
INIT_STD = 0.08  # wider than the usual 0.02 so greedy choices are not near-ties

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

CORPUS = """\
The quick brown fox jumps over the lazy dog. A circuit is a path that information takes
through a network, from the words of a prompt to the word the model says next.
Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.
Madrid is the capital of Spain. Lisbon is the capital of Portugal. Vienna is the capital of Austria.
Michael Jordan played basketball. Serena Williams played tennis. Lionel Messi plays football.
One, two, three, four, five, six, seven, eight, nine, ten. Monday, Tuesday, Wednesday, Thursday,
Friday, Saturday, Sunday. January, February, March, April, May, June, July, August, September,
October, November, December. Red, orange, yellow, green, blue, indigo, violet.
The cat sat on the mat. The dog slept by the door. The bird sang in the tree at dawn.
A server answers requests; a client sends them. Tokens stream back one at a time, and the
client prints each piece as soon as it arrives. When the client goes away, the server stops.
Features are directions in the residual stream. A transcoder reads the input of a layer's
MLP and writes its output through a sparse set of features that people can name and inspect.
An attribution graph shows which features caused which others, and which caused the answer.
If the model does not know the answer, a feature for "can't answer" may light up; if it knows
the entity, a "known entity" feature may suppress it. Auditors follow these paths backwards.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 100 1000.
Questions and answers: What is the capital of France? Paris. Who played basketball? Michael Jordan.
What colour is the sky? Blue. How many days are in a week? Seven. What comes after Monday? Tuesday.
"""


def build_demo_model(
    out_dir: str | Path,
    *,
    arch: Arch = "llama",
    seed: int = 0,
    n_layers: int = N_LAYERS,
    d_model: int = D_MODEL,
    n_heads: int = N_HEADS,
    n_kv_heads: int = N_KV_HEADS,
    d_mlp: int = D_MLP,
) -> Path:
    """Write config, safetensors weights and tokenizer files to `out_dir`; return it.

    The shape defaults to the constants above; a larger one (for example 6 layers, d_model 256,
    8 heads, MLP 1024) gives graph results of several MB. `d_model / n_heads` must be a head size
    that vLLM's CPU attention supports (32, 64, 80, ...).
    """
    import torch
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    vocab = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    common = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_STD,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    if arch == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False, rms_norm_eps=1e-6)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "gemma2":
        config = transformers.Gemma2Config(
            **common,
            tie_word_embeddings=True,  # vLLM's Gemma-2 requires tied embeddings
            query_pre_attn_scalar=d_model // n_heads,
            sliding_window=256,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh",
        )
        model_cls = transformers.Gemma2ForCausalLM
    else:
        raise ValueError(f"arch must be 'llama' or 'gemma2', got {arch!r}")

    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _train_tokenizer():
    """Byte-level BPE on CORPUS; adds <s> in front of every encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )
