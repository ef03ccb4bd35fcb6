"""Peak-memory estimate of one attribution request, in bytes (float32 working tensors).

1. Edge matrix: (F + K) rows x (n_active + (L + 1) P) columns; twice when max_feature_nodes
   leaves features out (rows are then reordered by a copy at the end).
2. The recorded prompt: attention patterns L x H x P^2, per-layer (P, d) tensors (transcoder
   input, MLP output, errors, reconstruction) and one layer's pre-activations P x d_tc.
3. Decoder vectors of the active features: n_active x (layers written) x d.
4. One transposed pass: B x P x d residual gradients (a few live at once), B x P x H x d_head,
   and its B rows before they are copied into the edge matrix.
Before the forward pass the number of active features is unknown: it is bounded by
`expected_l0` features per (layer, position) (or d_tc if smaller).
"""

from __future__ import annotations

from circuit_serve.tracing.architecture import Architecture
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.transcoders import TranscoderSet

F32 = 4


def estimate_bytes(
    arch: Architecture,
    tcs: TranscoderSet,
    n_tokens: int,
    settings: AttributionSettings,
    *,
    n_active: int | None = None,
    n_logits: int | None = None,
    expected_l0: int = 256,
) -> int:
    L, P, d, H = arch.n_layers, n_tokens, arch.d_model, arch.n_heads
    if n_active is None:
        n_active = L * max(P - 1, 0) * min(tcs.d_transcoder, expected_l0)
    K = settings.max_n_logits if n_logits is None else n_logits
    F = min(settings.max_feature_nodes or n_active, n_active)
    edge = (F + K) * (n_active + (L + 1) * P) * F32 * (1 if F == n_active else 2)
    recorded = (L * H * P * P + 6 * L * P * d + 2 * P * tcs.d_transcoder) * F32
    written = L if tcs.is_clt else 1
    decoders = n_active * written * d * F32
    B = min(settings.batch_size, F + K)
    backward = (B * P * (5 * d + 2 * H * arch.head_dim) + B * (n_active + (L + 1) * P)) * F32
    return int(edge + recorded + decoders + backward)
