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
7. Head loadings (opt-in, heads.py): the kept edges split by attention head.
8. QK attribution (opt-in, qk.py): each requested attention edge's score split by the residual
   components at its query and key positions (the record keeps those positions' residuals).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from circuit_serve.domain.errors import Cancelled
from circuit_serve.tracing.graph import AttributionGraph
from circuit_serve.tracing.heads import head_loadings
from circuit_serve.tracing.local_model import LocalReplacement, compute_activations
from circuit_serve.tracing.local_model import check_stop as lm_check_stop
from circuit_serve.tracing.qk import check_edges, qk_attribution
from circuit_serve.tracing.rowstore import RowStore
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
    sums = torch.empty(R, device=dev)  # (R,) row sums of |E|
    for i in range(0, R, chunk):
        lm_check_stop(should_stop, "influence estimate, row sums")
        sums[i : i + chunk] = edges[i : i + chunk].abs().sum(1)
    sums = sums.clamp(min=1e-8)
    x = torch.zeros(n_cols + K, device=dev)
    x[n_cols:] = logit_probs.to(dev)
    total = torch.zeros(n_cols + K, device=dev)
    for _ in range(max_iter):
        w = x[row_nodes] / sums  # (R,)
        nxt = torch.zeros(n_cols + K, device=dev)
        for i in range(0, R, chunk):
            lm_check_stop(should_stop, "influence estimate")
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
    dense_rows: bool | None = None,
) -> AttributionGraph:
    """`dense_rows`: True holds every visited row over all sources in memory (the faster path, whose
    memory grows with the prompt squared); False streams the rows (bounded memory); None (the
    default) picks dense rows where their estimate fits the memory budget, streamed rows where it
    does not or where no budget is set. Both give the same graph (tests/tracing/test_tracing_long.py)."""
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
    qk_edges = check_edges(settings.qk_edges, rm.arch.n_layers, rm.arch.n_heads, len(tokens))
    rec = rm.record(tokens, should_stop, keep_mid=[p for e in qk_edges for p in (e.query_pos, e.key_pos)])
    t = phase("1_record", t)

    # Phase 2: features, errors, decoder groups --------------------------------------------
    check_stop()
    report("2 features", 0.0)
    acts = compute_activations(rm.transcoders, rec, should_stop=should_stop)
    lrm = LocalReplacement(rm.arch, rm.transcoders, rec, acts, should_stop, hold_vectors_bytes=rm.work_bytes())
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
    if dense_rows is None:  # dense rows are faster (measured 1.25x at 64 tokens); take them where they fit
        budget = rm.memory_budget_bytes
        need = rm.estimate_memory(P, settings, n_active=n_active, n_logits=K, dense_rows=True)
        dense_rows = budget is not None and need <= budget
    rm.check_memory(P, settings, n_active=n_active, n_logits=K, dense_rows=dense_rows)
    t = phase("3_targets", t)
    run = _Rows(lrm, acts, tg, settings, n_sel, report, check_stop, should_stop)
    chunk = backward_chunk(P, rm.arch.d_model, n_cols, settings.batch_size, rm.work_bytes())
    if n_sel == n_active or dense_rows:
        selected, edges = run.dense(phase, t)
    else:
        held = rm.row_memory_bytes(P, settings, n_active, K)
        selected, edges = run.streamed(phase, t, chunk, held, rm.spill_dir)
    check_stop()  # phase 5's last batch may have taken its time
    t = time.perf_counter()
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
    t = phase("6_package", t)
    if settings.head_loadings:
        report("7 head loadings", 0.0)
        graph.head_loadings = head_loadings(
            lrm, graph.prune().edge_mask, selected, run.targets(selected), chunk, should_stop
        )
        t = phase("7_head_loadings", t)
    if qk_edges:
        report("8 qk attribution", 0.0)
        graph.qk = [qk_attribution(lrm, e) for e in qk_edges]
        phase("8_qk", t)
    report("6 done", 1.0)
    return graph


class _Rows:
    """Phases 4-5: logit rows, then feature rows visited by estimated influence."""

    def __init__(self, lrm, acts, tg, settings, n_sel, report, check_stop, should_stop):
        self.lrm, self.acts, self.tg, self.settings, self.n_sel = lrm, acts, tg, settings, n_sel
        self.report, self.check_stop, self.should_stop = report, check_stop, should_stop
        self.layer, self.pos = acts.indices[:, 0], acts.indices[:, 1]

    def compute(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(b, n_cols) rows of b targets sorted by layer, descending."""
        buf = torch.zeros(len(layers), self.lrm.n_cols, device=self.lrm.device)
        self.lrm.rows(layers, positions, vectors, buf, self.should_stop)
        return buf

    def feature_rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Active features `idx` -> (idx sorted layer-descending, their rows)."""
        idx = idx[torch.argsort(self.layer[idx], descending=True, stable=True)]
        return idx, self.compute(self.layer[idx], self.pos[idx], self.lrm.encoder_vectors(idx))

    def logit_rows(self, i: int, j: int) -> torch.Tensor:
        L, P = self.lrm.n_layers, self.lrm.n_pos
        return self.compute(
            torch.full((j - i,), L), torch.full((j - i,), P - 1), self.tg.vectors[i:j].to(self.lrm.device)
        )

    def targets(self, selected: torch.Tensor):
        """compact rows -> (layers, positions, vectors) of those targets: rows below F are the
        selected features, the others logit targets."""
        F, L, P = len(selected), self.lrm.n_layers, self.lrm.n_pos

        def spec(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            layers = torch.full((len(rows),), L)
            positions = torch.full((len(rows),), P - 1)
            vectors = torch.empty(len(rows), self.lrm.d, device=self.lrm.device)
            feat = rows < F
            idx = selected[rows[feat]]
            layers[feat], positions[feat] = self.layer[idx], self.pos[idx]
            if feat.any():
                vectors[feat.to(vectors.device)] = self.lrm.encoder_vectors(idx)
            if (~feat).any():
                vectors[(~feat).to(vectors.device)] = self.tg.vectors[rows[~feat] - F].to(vectors.device).float()
            return layers, positions, vectors

        return spec

    def dense(self, phase, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Every visited row over all sources in one (n_sel + K, n_cols) matrix."""
        lrm, tg, n_sel, B = self.lrm, self.tg, self.n_sel, self.settings.batch_size
        n_active, n_cols, dev, K = lrm.n_active, lrm.n_cols, lrm.device, len(tg)
        # Every feature visited: rows go straight to their final place [features | logits].
        # Otherwise rows are stored in visit order (the influence estimate reads them) and
        # reordered at the end.
        full = n_sel == n_active
        edges = torch.empty(n_sel + K, n_cols, device=dev)  # every row is written
        row_nodes = torch.zeros(n_sel + K, dtype=torch.long, device=dev)  # node of each row (visit order)
        first_logit_row = n_sel if full else 0
        self.report("4 logit rows", 0.0)
        for i in range(0, K, B):
            self.check_stop()
            j = min(i + B, K)
            edges[first_logit_row + i : first_logit_row + j] = self.logit_rows(i, j)
            row_nodes[i:j] = n_cols + torch.arange(i, j, device=dev)
            self.report("4 logit rows", j / K)
        t = phase("4_logit_rows", t)
        self.report("5 feature rows", 0.0)
        visited = torch.zeros(n_active, dtype=torch.bool)
        st, n_visited = K, 0
        while n_visited < n_sel:
            if full:
                pending = torch.arange(n_active)
            else:
                infl = partial_influence(
                    edges[:st], row_nodes[:st], tg.probabilities, n_cols, should_stop=self.should_stop
                )
                rank = torch.argsort(infl[:n_active], descending=True).cpu()
                pending = rank[~visited[rank]][: min(UPDATE_INTERVAL * B, n_sel - n_visited)]
            for i in range(0, len(pending), B):
                self.check_stop()
                idx, rows = self.feature_rows(pending[i : i + B])
                b = len(idx)
                dest = idx if full else torch.arange(st, st + b)
                edges.index_copy_(0, dest.to(dev), rows)
                row_nodes[st : st + b] = idx.to(dev)
                visited[idx] = True
                st += b
                n_visited += b
                self.report("5 feature rows", n_visited / max(n_sel, 1))
        phase("5_feature_rows", t)
        if not full:
            edges = edges[torch.argsort(row_nodes)]  # features by active index, then logits (n_cols + k)
        return torch.nonzero(visited).flatten(), edges

    def streamed(self, phase, t: float, chunk: int, memory_bytes: int, spill_dir: str | None):
        """The same visits with rows held in a RowStore and computed `chunk` targets at a time;
        once the last influence estimate has fixed the selection, the remaining rows are kept only
        at the graph's columns. Returns (selected, compact edges (n_sel + K, n_sel + (L + 1) P))."""
        lrm, tg, n_sel, B = self.lrm, self.tg, self.n_sel, self.settings.batch_size
        n_active, n_cols, K = lrm.n_active, lrm.n_cols, len(tg)
        store = RowStore(n_cols, memory_bytes=memory_bytes, spill_dir=spill_dir)
        try:
            self.report("4 logit rows", 0.0)
            for i in range(0, K, chunk):
                self.check_stop()
                j = min(i + chunk, K)
                store.append(self.logit_rows(i, j), n_cols + torch.arange(i, j))
                self.report("4 logit rows", j / K)
            t = phase("4_logit_rows", t)
            self.report("5 feature rows", 0.0)
            visited = torch.zeros(n_active, dtype=torch.bool)
            n_visited = 0
            late: list[tuple[torch.Tensor, torch.Tensor]] = []  # (nodes, rows at the final columns)
            while n_visited < n_sel:
                infl = store.influence(tg.probabilities, self.should_stop)
                rank = torch.argsort(infl[:n_active], descending=True)
                pending = rank[~visited[rank]][: min(UPDATE_INTERVAL * B, n_sel - n_visited)]
                last = n_visited + len(pending) == n_sel
                if last:
                    visited[pending] = True
                    cols = torch.cat([torch.nonzero(visited).flatten(), torch.arange(n_active, n_cols)])
                for i in range(0, len(pending), chunk):
                    self.check_stop()
                    idx, rows = self.feature_rows(pending[i : i + chunk])
                    if last:
                        late.append((idx, rows[:, cols.to(rows.device)].cpu()))
                    else:
                        store.append(rows, idx)
                    visited[idx] = True
                    n_visited += len(idx)
                    self.report("5 feature rows", n_visited / max(n_sel, 1))
            phase("5_feature_rows", t)
            nodes = torch.cat([*store.nodes, *(n for n, _ in late)])
            edges = torch.cat([store.gather(cols, self.should_stop), *(r for _, r in late)])
        finally:
            store.close()
        return torch.nonzero(visited).flatten(), edges[torch.argsort(nodes)]


def backward_chunk(n_pos: int, d_model: int, n_cols: int, batch_size: int, work_bytes: int) -> int:
    """Targets per transposed pass so that its working tensors fit `work_bytes`: each target
    holds about 8 (P, d) float32 tensors at once (residual gradients, their attention and skip
    transposes) and its (n_cols,) row."""
    per_target = (8 * n_pos * d_model + 2 * n_cols) * 4
    return max(1, min(batch_size, work_bytes // per_target))
