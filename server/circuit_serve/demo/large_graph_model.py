"""The random model of issue 10, whose attribution graphs exceed gRPC's default 4 MiB message size.

    model_dir, transcoder_dir = build_large_graph_model(out_dir)

A random-weight Llama with 6 layers, d_model 256, 8 heads, MLP 1024 (the demo tokenizer),
and random per-layer JumpReLU transcoders of 2,048 features that fire on about 5% of
(layer, position) pairs (4.5-4.6% measured on the two prompts below). Its graphs:

- PROMPT_7 (7 tokens, BOS included), default settings: about 4,100 active features;
- PROMPT_71 (71 tokens), max_feature_nodes 2,000;

each comes back as an AttributionResult of 8-10 MB (protobuf graph about 1 MB, frontend
JSON the rest). Deterministic; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from circuit_serve.demo.random_model import build_demo_model
from circuit_serve.demo.random_transcoders import write_random_transcoders

N_LAYERS, D_MODEL, N_HEADS, D_MLP = 6, 256, 8, 1024
D_TRANSCODER = 2048
# The demo tokenizer's residual stream here is larger than write_random_transcoders' estimate
# assumes, so the threshold is set directly: 7.5 gives the 5% firing rate (measured).
THRESHOLD = 7.5

PROMPT_7 = "The capital of France is in"
PROMPT_71 = " ".join(["The quick brown fox jumps over the lazy dog."] * 7)
# (prompt, max_feature_nodes or None for the server's default)
GRAPHS = [(PROMPT_7, None), (PROMPT_71, 2000)]


def build_large_graph_model(out_dir: str | Path) -> tuple[Path, Path]:
    """Write the model and its transcoders under `out_dir`; return (model_dir, transcoder_dir)."""
    out = Path(out_dir)
    model = build_demo_model(
        out / "model", seed=0, n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=N_HEADS, d_mlp=D_MLP
    )
    transcoders = write_random_transcoders(
        model, out / "transcoders", d_transcoder=D_TRANSCODER, threshold=THRESHOLD, seed=0
    )
    return model, transcoders
