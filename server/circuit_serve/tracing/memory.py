"""Peak-memory estimate of one attribution request, in bytes (float32 working tensors).

Streamed rows (the default whenever `max_feature_nodes` leaves features out):

1. The recorded prompt: the causal half of the attention patterns (query blocks of
   PATTERN_BLOCK, L x H x P (P + block) / 2), the eager forward pass's transient scores of one
   layer (3 x H x P^2), per-layer (P, d) tensors (transcoder input, MLP output, errors,
   reconstruction) and one layer's pre-activations and activations (2 x P x d_tc).
2. Active features: indices, values and source groups (~64 bytes each) and each layer's table
   of distinct decoder rows (at most d_tc x layers written x d).
3. Rows: the compact graph (F + K) x (F + (L + 1) P) twice (gathered, then ordered), the influence walk
   between row nodes (F + K) x F, and the activation-scaled decoder vectors of every active
   feature where they fit `work_bytes` (LocalReplacement holds them then). The row store (visited rows over every source) is not
   counted: it keeps in memory only what the budget leaves beyond this estimate
   (ReplacementModel.row_memory_bytes) and spills the rest to disk.
4. One transposed pass: `work_bytes` (backward batches are sized to it).

Dense rows (every active feature a node, or `dense_rows`) hold (F + K) x (n_active + (L + 1) P)
instead of 3, twice when features are left out, and the activation-scaled decoder vectors of
every active feature.
Before the forward pass the number of active features is unknown: it is bounded by
`expected_l0` features per (layer, position) (or d_tc if smaller).
"""

from __future__ import annotations

from circuit_serve.tracing.architecture import Architecture
from circuit_serve.tracing.local_model import PATTERN_BLOCK
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.transcoders import TranscoderSet

F32 = 4
PER_FEATURE = 64  # bytes of bookkeeping per active feature (indices, values, source groups)


def expected_active(arch: Architecture, tcs: TranscoderSet, n_tokens: int, expected_l0: int) -> int:
    return arch.n_layers * max(n_tokens - 1, 0) * min(tcs.d_transcoder, expected_l0)


def estimate_bytes(
    arch: Architecture,
    tcs: TranscoderSet,
    n_tokens: int,
    settings: AttributionSettings,
    *,
    n_active: int | None = None,
    n_logits: int | None = None,
    expected_l0: int = 256,
    work_bytes: int | None = None,
    dense_rows: bool = False,
) -> int:
    L, P, d, H = arch.n_layers, n_tokens, arch.d_model, arch.n_heads
    if n_active is None:
        n_active = expected_active(arch, tcs, P, expected_l0)
    K = settings.max_n_logits if n_logits is None else n_logits
    F = min(settings.max_feature_nodes or n_active, n_active)
    n_cols = n_active + (L + 1) * P
    streamed = F < n_active and not dense_rows
    written = L if tcs.is_clt else 1
    stored_keys = P * P if P <= PATTERN_BLOCK else P * (P + PATTERN_BLOCK) // 2
    recorded = (L * H * stored_keys + 3 * H * P * P + 6 * L * P * d + 2 * P * tcs.d_transcoder) * F32
    features = n_active * PER_FEATURE + L * min(tcs.d_transcoder, n_active) * written * d * F32
    if streamed:
        rows = 2 * (F + K) * (F + (L + 1) * P) * F32 + (F + K) * F * F32
        vectors = n_active * written * d * F32  # held only where they fit `work_bytes`
        rows += vectors if work_bytes is not None and vectors <= work_bytes else 0
    else:
        rows = (F + K) * n_cols * F32 * (1 if F == n_active else 2) + n_active * written * d * F32
    B = min(settings.batch_size, F + K)
    backward = (B * P * (5 * d + 2 * H * arch.head_dim) + B * n_cols) * F32
    if streamed and work_bytes is not None:
        backward = min(backward, work_bytes + 2 * n_cols * F32)
    return int(recorded + features + rows + backward)


def largest_prompt(fits, upper: int) -> int:
    """Largest n in [1, upper] with fits(n) (fits is monotone), 0 if none."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
