"""Attribution: the graph of direct effects between features, errors, embeddings and logits.

Method (Ameisen et al. 2025, "Circuit Tracing", transformer-circuits.pub; server/docs/design.md),
in the phases this module runs and times:

1. Record: one forward pass of the real model on the prompt (local_model.record).
2. Local replacement model: active features (BOS zeroed), error vectors, decoder groups.
3. Targets: logit directions (top tokens by cumulative probability, explicit ids or a
   contrast); the memory estimate is checked against the budget before anything large exists.
4. Logit rows: one transposed pass per batch of logit targets gives A[logit, every source].
5. Feature rows: batches of active features (encoder rows injected at their transcoder input)
   give A[feature, every source]. With `max_feature_nodes` below the active count, features are
   visited by their estimated influence on the logits, computed from the rows so far
   (row-normalised |A| walked back from the logit probabilities) and re-estimated every
   `update_interval` batches.
6. Package: rows in the order [selected features | logits]; the graph keeps
   selected-rows x all-columns weights, settings, identities and these timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from circuit_serve.domain.errors import Cancelled
from circuit_serve.tracing.graph import AttributionGraph
from circuit_serve.tracing.local_model import LocalReplacement, compute_activations
from circuit_serve.tracing.local_model import check_stop as lm_check_stop
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import TargetSpec, select_targets

UPDATE_INTERVAL = 4  # batches between re-estimates of feature influence (as the reference)

Progress = Callable[[str, float], None]


def partial_influence(
    edges: torch.Tensor,
    row_nodes: torch.Tensor,
    logit_probs: torch.Tensor,
    n_cols: int,
    chunk: int = 2048,
    max_iter: int = 128,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(n_cols + K,) influence of every node on the logits using only the rows computed so far.

    edges (R, n_cols) rows so far; row_nodes (R,) node index of each row (features: active
    index; logit k: n_cols + k). Walks x <- x[rows] @ (|E| / rowsum) without materialising
    the normalised matrix (chunks of `chunk` rows).
    """
    R = edges.shape[0]
    K = len(logit_probs)
    dev = edges.device
    sums = torch.cat([edges[i : i + chunk].abs().sum(1) for i in range(0, R, chunk)]).clamp(min=1e-8)  # (R,)
    x = torch.zeros(n_cols + K, device=dev)
    x[n_cols:] = logit_probs.to(dev)
    total = torch.zeros(n_cols + K, device=dev)
    for _ in range(max_iter):
        lm_check_stop(should_stop, "influence estimate")
        w = x[row_nodes] / sums  # (R,)
        nxt = torch.zeros(n_cols + K, device=dev)
        for i in range(0, R, chunk):
            nxt[:n_cols] += w[i : i + chunk] @ edges[i : i + chunk].abs()
        x = nxt
        if not x.any():
            return total
        total += x
    raise RuntimeError("feature influence did not converge")


def run_attribution(
    rm,  # circuit_serve.tracing.replacement.ReplacementModel
    tokens: torch.Tensor,
    settings: AttributionSettings,
    *,
    targets: Sequence[TargetSpec] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    prompt: str | None = None,
) -> AttributionGraph:
    timings: dict[str, float] = {}
    report = progress or (lambda phase, frac: None)

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("attribution was cancelled")

    def phase(name: str, t0: float) -> float:
        timings[name] = time.perf_counter() - t0
        return time.perf_counter()

    t = time.perf_counter()
    # Phase 1: record the prompt's forward pass --------------------------------------------
    report("1 record", 0.0)
    rec = rm.record(tokens, should_stop)
    t = phase("1_record", t)

    # Phase 2: features, errors, decoder groups --------------------------------------------
    check_stop()
    report("2 features", 0.0)
    acts = compute_activations(rm.transcoders, rec, should_stop=should_stop)
    lrm = LocalReplacement(rm.arch, rm.transcoders, rec, acts, should_stop)
    n_active, n_cols, L, P = lrm.n_active, lrm.n_cols, lrm.n_layers, lrm.n_pos
    t = phase("2_features", t)

    # Phase 3: targets and the memory check -------------------------------------------------
    tg = select_targets(
        rec.logits,
        rm.arch.lm_head.weight,
        rm.decode_token,
        targets=targets,
        max_n_logits=settings.max_n_logits,
        desired_logit_prob=settings.desired_logit_prob,
    )
    K = len(tg)
    n_sel = min(settings.max_feature_nodes or n_active, n_active)
    rm.check_memory(P, settings, n_active=n_active, n_logits=K)
    dev = lrm.device
    # Every selected feature visited: rows go straight to their final place [features | logits].
    # Otherwise rows are stored in visit order (the influence estimate reads them) and reordered
    # in phase 6.
    full = n_sel == n_active
    edges = torch.empty(n_sel + K, n_cols, device=dev)  # (rows, all sources); every row is written
    row_nodes = torch.zeros(n_sel + K, dtype=torch.long, device=dev)  # node index of each row (visit order)

    def fill(dest: torch.Tensor, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> None:
        buf = torch.zeros(len(dest), n_cols, device=dev)  # (b, n_cols)
        lrm.rows(layers, positions, vectors, buf, should_stop)
        edges.index_copy_(0, dest.to(dev), buf)

    t = phase("3_targets", t)

    # Phase 4: logit rows -------------------------------------------------------------------
    B = settings.batch_size
    first_logit_row = n_sel if full else 0
    for i in range(0, K, B):
        check_stop()
        j = min(i + B, K)
        fill(
            torch.arange(first_logit_row + i, first_logit_row + j),
            torch.full((j - i,), L),
            torch.full((j - i,), P - 1),
            tg.vectors[i:j].to(dev),
        )
        row_nodes[i:j] = n_cols + torch.arange(i, j, device=dev)
        report("4 logit rows", j / K)
    t = phase("4_logit_rows", t)

    # Phase 5: feature rows, visited by estimated influence --------------------------------
    feat_layer = acts.indices[:, 0]
    feat_pos = acts.indices[:, 1]
    visited = torch.zeros(n_active, dtype=torch.bool)
    st, n_visited = K, 0
    while n_visited < n_sel:
        if full:
            pending = torch.arange(n_active)
        else:
            infl = partial_influence(edges[:st], row_nodes[:st], tg.probabilities, n_cols, should_stop=should_stop)
            rank = torch.argsort(infl[:n_active], descending=True).cpu()
            pending = rank[~visited[rank]][: min(UPDATE_INTERVAL * B, n_sel - n_visited)]
        for i in range(0, len(pending), B):
            check_stop()
            idx = pending[i : i + B]
            idx = idx[torch.argsort(feat_layer[idx], descending=True, stable=True)]  # layer-descending
            b = len(idx)
            dest = idx if full else torch.arange(st, st + b)
            fill(dest, feat_layer[idx], feat_pos[idx], lrm.encoder_vectors(idx))
            row_nodes[st : st + b] = idx.to(dev)
            visited[idx] = True
            st += b
            n_visited += b
            report("5 feature rows", n_visited / max(n_sel, 1))
    t = phase("5_feature_rows", t)

    # Phase 6: package ----------------------------------------------------------------------
    selected = torch.nonzero(visited).flatten()  # (F,) sorted
    if not full:
        edges = edges[torch.argsort(row_nodes)]  # features by active index, then logits (n_cols + k)
    graph = AttributionGraph(
        prompt=prompt if prompt is not None else rm.decode_tokens(rec.tokens.tolist()),
        input_tokens=rec.tokens.clone(),
        input_token_strs=[rm.decode_token(x) for x in rec.tokens.tolist()],
        n_layers=L,
        active_features=acts.indices.clone(),
        activation_values=acts.values.float().cpu(),
        selected_features=selected,
        logit_token_ids=torch.tensor(tg.token_ids, dtype=torch.long),
        logit_contrast_ids=tg.contrast_ids,
        logit_labels=tg.labels,
        logit_probabilities=tg.probabilities.float().cpu(),
        edges=edges,
        settings=settings,
        model_id=rm.model_id,
        transcoder_id=rm.transcoder_id,
        scan=rm.transcoders.scan,
        model_name=rm.model_name,
        timings=timings,
    )
    phase("6_package", t)
    report("6 done", 1.0)
    return graph
