"""A tiny random Llama and random transcoders (PLT or CLT), built in-process, deterministic."""

from __future__ import annotations

import torch

from circuit_serve.tracing.transcoders import TranscoderSet

D_MODEL, N_LAYERS, D_TC, VOCAB = 64, 3, 48, 96


class ByteTokenizer:
    """Enough of a tokenizer for the replacement model: BOS = 0, byte b -> id b % 95 + 1, printed `<id>`."""

    bos_token_id, pad_token_id, eos_token_id = 0, None, None
    all_special_ids = [0]

    def __call__(self, text, add_special_tokens=True):
        from types import SimpleNamespace

        ids = [b % (VOCAB - 1) + 1 for b in text.encode()]
        return SimpleNamespace(input_ids=([0] if add_special_tokens else []) + ids)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"<{i}>" for i in ids if not (skip_special_tokens and i == 0))


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():  # larger weights so the output depends on the features
        p.data.normal_(0, 0.2) if p.ndim > 1 else None
    model.generation_config.eos_token_id = None
    return model


def tiny_gemma2(seed: int = 0):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    cfg = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=None,
        query_pre_attn_scalar=32,
        sliding_window=64,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        attn_implementation="eager",
    )
    model = Gemma2ForCausalLM(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2) if p.ndim > 1 else None
    model.generation_config.eos_token_id = None
    return model


def tiny_transcoders(
    kind: str = "plt", seed: int = 1, *, input_hook: str = "mlp.hook_in", output_hook: str = "mlp.hook_out"
) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    L = N_LAYERS
    W_dec = (
        [randn(D_TC, D_MODEL, scale=0.3) for _ in range(L)]
        if kind == "plt"
        else [randn(D_TC, L - i, D_MODEL, scale=0.3) for i in range(L)]
    )
    return TranscoderSet(
        kind=kind,
        W_enc=[randn(D_TC, D_MODEL, scale=0.5) for _ in range(L)],
        b_enc=[randn(D_TC, scale=0.1) for _ in range(L)],
        W_dec=W_dec,
        b_dec=[torch.zeros(D_MODEL) for _ in range(L)],
        activation="relu",
        feature_input_hook=input_hook,
        feature_output_hook=output_hook,
    )
