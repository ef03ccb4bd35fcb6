"""The GPU memory plan: how one card is shared by vLLM and the replacement model with its transcoders.

A pure function of the model's config.json, the transcoder set's shapes, the card's size and the
attribution budget; no weights are read. vLLM starts first and takes `gpu_memory_utilization` of
the card, so everything the tracing side needs must be set aside before it starts:

1. vLLM: its weights (parameters x serving dtype), its activation peak (a prefill of
   `max_num_batched_tokens` tokens plus the sampler's float32 logits of `max_num_seqs` sequences),
   its CUDA context, and the KV cache, which gets whatever is left of vLLM's share and must hold at
   least `min_kv_tokens` tokens (one `max_model_len` sequence).
2. The replacement model: a second copy of the weights in the serving dtype (edges and the
   completeness check accumulate in float32; the float32 working tensors are the attribution
   budget).
3. The transcoders, as held (transcoders.py): encoders, biases, thresholds and skips in the
   serving dtype, plus the decoders unless they are read lazily.
4. The attribution budget: `workers x --attribution-memory-budget-gib`.
5. Overheads: the server process's CUDA context and an allocator reserve.

Host memory the plan also lists (not on the card): the in-engine monitor's store of watched values
of cached prompt blocks (`--monitor-cache-mib`, see monitoring/block_store.py).

`gpu_memory_utilization = (card - (2 + 3 + 4 + 5)) / card`. The plan refuses, with the numbers,
when the KV cache share left to vLLM cannot hold `min_kv_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1 << 30
MIB = 1 << 20
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a Llama / Gemma-2 / Qwen3 config.json."""

    model_type: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    torch_dtype: str = "bfloat16"

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShape:
        n_heads = int(cfg["num_attention_heads"])
        return cls(
            model_type=str(cfg.get("model_type", "")),
            n_layers=int(cfg["num_hidden_layers"]),
            d_model=int(cfg["hidden_size"]),
            d_mlp=int(cfg["intermediate_size"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // n_heads),
            vocab=int(cfg["vocab_size"]),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
        )

    @property
    def n_params(self) -> int:
        d, H, KV, dh = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * H * dh + 2 * d * KV * dh + H * dh * d  # q, k, v, o (no biases)
        mlp = 3 * d * self.d_mlp  # gate, up, down
        norms = (4 if self.model_type == "gemma2" else 2) * d + (2 * dh if self.model_type == "qwen3" else 0)
        embed = self.vocab * d * (1 if self.tied_embeddings else 2)
        return self.n_layers * (attn + mlp + norms) + embed + d  # + the final norm

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class TranscoderShape:
    kind: str  # "plt" | "clt"
    n_layers: int
    d_transcoder: int
    d_model: int
    skip: bool = False
    threshold: bool = False
    lazy_decoder: bool = True  # False for .npz sets (held in memory) or when asked

    def resident_elements(self) -> int:
        """Elements held in memory (see transcoders.py): encoders, biases, thresholds, skips, decoders if eager."""
        L, F, d = self.n_layers, self.d_transcoder, self.d_model
        n = L * (F * d + F + d)  # W_enc, b_enc, b_dec
        n += L * F if self.threshold else 0
        n += L * d * d if self.skip else 0
        if not self.lazy_decoder:
            n += L * F * d if self.kind == "plt" else F * d * L * (L + 1) // 2
        return n


@dataclass(frozen=True)
class MemoryPlan:
    card_bytes: int
    components: dict[str, int]  # name -> bytes, in the order of the module docstring
    fits: bool
    reason: str
    gpu_memory_utilization: float
    notes: dict[str, str] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)  # name -> bytes of host memory (not on the card)

    def render(self) -> str:
        rows = [f"GPU memory plan for a {self.card_bytes / GIB:.1f} GiB card:"]
        for name, b in self.components.items():
            rows.append(f"  {name:<30} {b / GIB:8.2f} GiB  {self.notes.get(name, '')}".rstrip())
        for name, b in self.host.items():
            rows.append(f"  {name:<30} {b / GIB:8.2f} GiB  host memory, not on the card")
        rows.append(f"  vLLM gpu_memory_utilization {self.gpu_memory_utilization:.3f}")
        rows.append(("  fits: " if self.fits else "  REFUSED: ") + self.reason)
        return "\n".join(rows)


def plan_memory(
    model: ModelShape,
    transcoders: TranscoderShape | None,
    *,
    card_bytes: int,
    dtype: str = "bfloat16",
    attribution_budget_bytes: int = 8 * GIB,
    attribution_workers: int = 1,
    max_model_len: int = 8192,
    min_kv_tokens: int | None = None,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
    cuda_context_bytes: int = 512 * MIB,
    allocator_reserve_bytes: int = 512 * MIB,
    monitor_store_bytes: int = 0,
) -> MemoryPlan:
    """Per-component bytes and vLLM's share of a `card_bytes` GPU; see the module docstring."""
    b = DTYPE_BYTES[dtype]
    weights = model.n_params * b
    # 1. vLLM's fixed parts: weights, prefill activations (q/k/v/o, MLP, residual) and float32 logits
    activations = max_num_batched_tokens * (4 * model.d_model + 2 * model.d_mlp) * b + max_num_seqs * model.vocab * 4
    kv_min = (min_kv_tokens or max_model_len) * model.kv_bytes_per_token(b)
    # 2-5. what is set aside for tracing
    tracing = {
        "replacement model weights": weights if transcoders is not None else 0,
        "transcoders": transcoders.resident_elements() * b if transcoders is not None else 0,
        "attribution budget": attribution_workers * attribution_budget_bytes if transcoders is not None else 0,
        "server CUDA context + reserve": (cuda_context_bytes + allocator_reserve_bytes)
        if transcoders is not None
        else 0,
    }
    reserved = sum(tracing.values())
    vllm_share = card_bytes - reserved
    kv = vllm_share - weights - activations - cuda_context_bytes
    components = {
        "vLLM weights": weights,
        "vLLM activations": activations,
        "vLLM CUDA context": cuda_context_bytes,
        "vLLM KV cache": max(kv, 0),
        **tracing,
    }
    notes = {
        "vLLM weights": f"{model.n_params:,} parameters x {b} B",
        "vLLM KV cache": f"{max(kv, 0) // model.kv_bytes_per_token(b):,} tokens; needs >= {kv_min / GIB:.2f} GiB",
    }
    if transcoders is not None:
        notes["transcoders"] = (
            f"{transcoders.kind} {transcoders.n_layers} x {transcoders.d_transcoder:,} features, "
            f"decoders {'read lazily' if transcoders.lazy_decoder else 'in memory'}"
        )
    util = max(0.0, min(1.0, vllm_share / card_bytes))
    host = {"monitor value store": monitor_store_bytes} if transcoders is not None and monitor_store_bytes else {}
    if kv >= kv_min:
        reason = (
            f"{(card_bytes - kv + kv_min) / GIB:.2f} GiB needed with the smallest KV cache; vLLM gets "
            f"{util:.3f} of the card, {kv / GIB:.2f} GiB of it for the KV cache"
        )
        return MemoryPlan(card_bytes, components, True, reason, util, notes, host)
    need = card_bytes - kv + kv_min
    biggest = max(tracing, key=tracing.get) if transcoders is not None else "vLLM weights"
    left = f"{kv / GIB:.2f} GiB" if kv > 0 else "nothing"
    reason = (
        f"needs {need / GIB:.2f} GiB but the card has {card_bytes / GIB:.2f} GiB: the KV cache would get "
        f"{left}, less than one {min_kv_tokens or max_model_len}-token sequence "
        f"({kv_min / GIB:.2f} GiB). The largest tracing part is the {biggest} "
        f"({tracing.get(biggest, weights) / GIB:.2f} GiB): lower --attribution-memory-budget-gib, "
        f"--max-model-len, use lazily read decoders (safetensors sets), or put attribution on another card "
        f"(--attribution-device cuda:1)"
    )
    return MemoryPlan(card_bytes, components, False, reason, util, notes, host)
