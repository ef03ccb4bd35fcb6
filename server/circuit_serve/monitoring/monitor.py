"""EngineMonitor: the server's side of in-engine monitoring (no protobuf, no vLLM types).

It is the generation engine's `circuit_serve.domain.monitor.RequestMonitor`. Before vLLM starts,
`start` binds the value channel and pins vLLM's V1 model runner, and `engine_args` names the
tapped model class and the rules' logits processor; once vLLM runs, `engine_ready` sizes the
block store (see `block_store`) to vLLM's KV block. For one monitored generation request:

1. `begin`: resolve the request's watch (None: it has none); lend columns to the request's own
   features (shared pool, see `columns`); route it through vLLM's prefix cache (`block_store`:
   shared, the monitored namespace, or a private `cache_salt` when it adds features of its own
   or is steered, by its interventions or its `steer` rules),
   taking the stored values of its leading cached prompt blocks and checking its stop rules on
   them; build the watch that travels in its `SamplingParams.extra_args` (columns, stop and
   steer rules and their thresholds, the sentinel token, a stop already fired on a stored
   position; the interventions, its steer rules' marked with the rule), one
   more token than asked for (so the last kept token is run through the model too), and for
   ignore_eos requests with stop rules the sentinel as a stop token;
2. while vLLM streams, `step` hands out the positions computed so far with each chunk;
3. `finish`: when vLLM's last output arrives, wait for the values of every position the engine
   ran (all but the last sampled token; positions vLLM took from its cache have stored values),
   then decide the outcome: after the firing token when a stop rule fired (the token sampled
   with it, or the forced sentinel, is dropped), at the asked length when the extra token was
   generated; store the full blocks' values, build the report, and cut the last chunk (tokens,
   text, logprobs, usage) to the kept tokens (`cut`);
4. `close`: give the columns back (and the request's pending blocks, see `block_store`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.domain.errors import CapacityExceeded, InvalidRequest, NotConfigured
from circuit_serve.domain.features import (
    Action,
    FeatureRef,
    FeatureReport,
    Intervention,
    MonitorReport,
    TranscoderShape,
    WatchedFeature,
    WatchedValues,
    WatchRequest,
    check_intervention_limits,
    check_interventions,
    check_steer_rules,
)
from circuit_serve.domain.generation import FinishReason, GenerationChunk, GenerationRequest, Usage
from circuit_serve.domain.monitor import Decode
from circuit_serve.monitoring.block_store import PRIVATE, BlockStore, Route
from circuit_serve.monitoring.channel import RequestValues, ValueChannel
from circuit_serve.monitoring.columns import ColumnPlan, SlotPool
from circuit_serve.monitoring.plugin import ARCHITECTURES, LOGITS_PROCESSOR, STEER_PROCESSOR
from circuit_serve.monitoring.spec import SPEC_KEY, MonitorSpec, encoder_rows
from circuit_serve.monitoring.wire import EXTRA_KEY, STEER_KEY, ColumnSet, RequestWatchArgs, SteerArgs, SteerEntry

log = logging.getLogger(__name__)

ReportSink = Callable[[MonitorReport, float], None]  # (server-watchlist part of a report, wait seconds)
_VALUES_TIMEOUT_S = 30.0
STEER_ROWS_CACHE_BYTES = 64 << 20  # steered features' decoder rows kept in the server (Monitor._decoder_rows)


@dataclass(frozen=True)
class Outcome:
    """How a monitored completion ends: its first `kept` tokens, its finish reason and report."""

    kept: int
    finish_reason: FinishReason
    report: MonitorReport
    activations: tuple[WatchedValues, ...]  # with values: positions not handed out yet


class EngineMonitor:
    def __init__(
        self,
        transcoders: Any,
        watched: Sequence[WatchedFeature],
        *,
        model_type: str,
        request_slots: int,
        max_request_watch: int,
        work_dir: Path,
        sink: ReportSink | None = None,
        cache_bytes: int = 0,
        max_interventions: int | None = None,
        max_intervention_positions: int | None = None,
    ) -> None:
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"in-engine monitoring supports model types {', '.join(ARCHITECTURES)}; this model is {model_type!r}"
            )
        self.transcoders = transcoders
        self.watched = tuple(watched)
        self.model_type = model_type
        self.max_request_watch = max_request_watch
        self.work_dir = Path(tempfile.mkdtemp(prefix="circuit-monitor-", dir=work_dir))  # the spec
        self.channel = ValueChannel()  # its socket in the system's temporary directory (a unix socket path is short)
        self.spec = MonitorSpec.from_transcoders(
            transcoders, [w.feature for w in self.watched], request_slots=request_slots, endpoint=self.channel.endpoint
        )
        self.plan: ColumnPlan = self.spec.plan
        self.pool = SlotPool(self.plan)
        self._spec_dir = self.spec.save(self.work_dir / "spec")
        self._sink = sink
        self.cache_bytes = cache_bytes
        self.store: BlockStore | None = None  # set by engine_ready when vLLM caches prefixes
        # Steering limits: the options Steer has (--max-interventions, --max-intervention-positions)
        self.max_interventions = max_interventions or FeaturesConfig().max_interventions
        self.max_intervention_positions = max_intervention_positions or InputLimits().max_positions
        self.shape = TranscoderShape(transcoders.n_layers, transcoders.d_transcoder)
        self.compiled = False  # vLLM compiles the layers (engine_args): steering is refused
        # Steered features' decoder rows (n_out, d) float32, newest last: read once, not per request
        # (a lazily loaded decoder opens its file for every read), at most STEER_ROWS_CACHE_BYTES.
        self._decoders: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._decoder_bytes = 0

    def engine_ready(self, *, block_size: int, prefix_caching: bool) -> None:
        """vLLM runs with KV blocks of `block_size` tokens (and prefix caching on or off)."""
        if prefix_caching and self.cache_bytes > 0 and self.watched:
            self.store = BlockStore(block_size, len(self.watched), self.cache_bytes)

    def engine_args(self, kwargs: Mapping[str, Any], *, enforce_eager: bool) -> dict[str, Any]:
        """`kwargs` (AsyncEngineArgs fields) with the tapped model class and the rules' logits processor.

        The taps run inside the compiled layers; the batch layout is noted by the model's Python
        forward, which piecewise CUDA graphs keep (a deployment's own compilation_config wins)."""
        out = dict(kwargs)
        self.compiled = not enforce_eager
        if not enforce_eager:
            out.setdefault("compilation_config", {"cudagraph_mode": "PIECEWISE"})
        architecture, _ = ARCHITECTURES[self.model_type]
        out.update(
            {
                "hf_overrides": {"architectures": [architecture], SPEC_KEY: str(self._spec_dir)},
                "logits_processors": [LOGITS_PROCESSOR, STEER_PROCESSOR],
            }
        )
        return out

    async def start(self) -> None:
        """Bind the value channel; pin vLLM's V1 model runner for the engine about to start (the
        rules' logits processor has V1's interface, update_state/apply; the CPU build uses it anyway)."""
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        await self.channel.start()

    def shutdown(self) -> None:
        self.channel.shutdown()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---- one request ---------------------------------------------------------------------------

    def begin(
        self,
        request_id: str,
        request: GenerationRequest,
        *,
        prompt_ids: Sequence[int],
        max_model_len: int,
        sentinel: int | None,
        decode: Decode,
    ) -> MonitoredRequest | None:
        """`request`'s watch and interventions started (None: it has neither); `decode` cuts the
        text at a rule. A steered request never shares vLLM's cached blocks (a private
        `cache_salt`: no unsteered KV is reused at a steered position) nor stores values."""
        watch, sampling = request.watch, request.sampling
        rules = [] if watch is None else [i for i, w in enumerate(watch.features) if w.action is Action.STEER]
        if watch is not None:
            check_steer_rules(watch.features[watch.n_server :])
        conditional = [(i, f"watch[{i - watch.n_server}].steer", watch.features[i].steer) for i in rules]
        steered = bool(request.interventions or conditional)
        steer = self.steer_args(request.interventions, len(prompt_ids), conditional=conditional) if steered else None
        private = f"circuit-monitor-{request_id}"
        if watch is None:
            return None if steer is None else SteeredRequest(steer, private)
        own = [w.feature for w in watch.features[watch.n_server :]]
        if len(own) > self.max_request_watch:
            raise InvalidRequest(f"has {len(own)} entries; the limit is {self.max_request_watch}", field="watch")
        if not self.pool.can_take(own):
            raise CapacityExceeded(
                "every monitor column of a watched layer is lent to running requests; retry "
                "shortly or watch features of the server's watchlist"
            )
        has_stop = any(w.action is Action.STOP for w in watch.features)
        if has_stop and sentinel is None:
            raise InvalidRequest(
                "stop rules need the model's end-of-sequence token, and its tokenizer has none", field="watch"
            )
        columns = list(self.plan.server_columns[: watch.n_server])
        sets = []
        rows, bias, thr = encoder_rows(self.transcoders, own)
        for j, feature in enumerate(own):
            column = self.pool.take(feature)
            columns.append(column)
            row = None if self.spec.activation == "topk" else rows[j].tolist()
            sets.append(ColumnSet(column, feature.layer, feature.index, row, float(bias[j]), float(thr[j])))
        stop = [i for i, w in enumerate(watch.features) if w.action is Action.STOP]
        if self.store is None or own or watch.n_server != len(self.watched) or steer is not None:
            route = None
        else:
            route = self.store.route(prompt_ids, private_salt=private)
        fired = _first_stop(route, watch, stop)
        args = RequestWatchArgs(
            rid=request_id,
            columns=columns,
            stop=stop,
            stop_thresholds=[watch.features[i].threshold for i in stop],
            sentinel=sentinel if has_stop else -1,
            ban_sentinel=has_stop and sampling.ignore_eos,
            sets=sets,
            fired=fired,
            steer=tuple(rules),
            steer_thresholds=tuple(watch.features[i].threshold for i in rules),
        )
        n_prompt = len(prompt_ids)
        extend = n_prompt + sampling.max_new_tokens + 1 <= max_model_len
        values = self.channel.open(request_id, len(columns))
        if route is not None and len(route.pre):
            values.preset(route.pre, route.active)
        values.fired = fired
        return MonitoredRequest(
            self,
            watch,
            args,
            values,
            own,
            decode,
            prompt_ids=prompt_ids,
            max_new_tokens=sampling.max_new_tokens,
            extended=extend,
            route=route,
            salt=route.salt if route is not None else private,
            steer=steer,
        )

    def steer_args(
        self,
        interventions: Sequence[Intervention],
        n_prompt: int,
        *,
        conditional: Sequence[tuple[int, str, Sequence[Intervention]]] = (),
    ) -> SteerArgs:
        """What the worker needs to apply `interventions` and the `conditional` ones of steer rules
        ((watch column index, field, interventions): off until that rule fires), checked:
        InvalidRequest names the field; the limit on interventions counts all of them.

        Refused (NotConfigured) when vLLM compiles the layers: the steering code in them is
        per-request Python that torch.compile would trace once (with no steered request) and
        CUDA graphs would replay without it, so the interventions would silently not apply."""
        if self.compiled:
            raise NotConfigured(
                "steering inside vLLM needs a server started with --enforce-eager (its per-request code "
                "is not captured by torch.compile / CUDA graphs yet)"
            )
        groups = [(-1, "interventions", interventions)] if interventions else []
        groups += [(rule, field, tuple(ivs)) for rule, field, ivs in conditional]
        total = sum(len(ivs) for _, _, ivs in groups)
        if total > self.max_interventions:
            raise InvalidRequest(
                f"the request has {total} interventions (its own and its steer rules'); the limit is "
                f"{self.max_interventions}",
                field=groups[-1][1],
            )
        for _rule, field, ivs in groups:
            check_intervention_limits(
                ivs, max_count=self.max_interventions, max_positions=self.max_intervention_positions, field=field
            )
            check_interventions(ivs, n_prompt, self.shape, field=field)
        flat = [(rule, iv) for rule, _field, ivs in groups for iv in ivs]
        features = [iv.feature for _, iv in flat]
        rows, bias, thr = encoder_rows(self.transcoders, features)
        entries = []
        for j, (rule, iv) in enumerate(flat):
            f = iv.feature
            decoder = self._decoder_rows(f.layer, f.index)
            entries.append(
                SteerEntry(
                    layer=f.layer,
                    index=f.index,
                    op=iv.op.value,
                    value=float(iv.value),
                    positions=sorted(set(iv.positions)),
                    all_prompt=iv.all_prompt,
                    generated=iv.generated,
                    row=None if self.spec.activation == "topk" else rows[j].tolist(),
                    bias=float(bias[j]),
                    threshold=float(thr[j]),
                    decoder=decoder.tolist(),  # (n_out, d)
                    rule=rule,
                )
            )
        return SteerArgs(n_prompt, entries)

    def _decoder_rows(self, layer: int, index: int) -> torch.Tensor:
        """`(n_out, d)` float32 on the CPU: the decoder rows of feature `index` of `layer`."""
        key = (layer, index)
        rows = self._decoders.get(key)
        if rows is not None:
            self._decoders.move_to_end(key)
            return rows
        device = self.transcoders.device
        rows = self.transcoders.decoder_rows(layer, torch.tensor([index], device=device))[0].detach().float().cpu()
        self._decoders[key] = rows
        self._decoder_bytes += rows.numel() * 4
        while self._decoder_bytes > STEER_ROWS_CACHE_BYTES and len(self._decoders) > 1:
            self._decoder_bytes -= self._decoders.popitem(last=False)[1].numel() * 4
        return rows

    def _release(self, request: MonitoredRequest) -> None:
        self.channel.close(request.args.rid)
        for feature in request.own:
            self.pool.give_back(feature)
        if self.store is not None and request.route is not None:
            self.store.release(request.route, complete=request.stored)

    def _keep(self, request: MonitoredRequest, n_tokens: int, tokens: Sequence[int]) -> bool:
        """Store the server columns of the full blocks the engine computed for a finished request
        (prompt and `tokens` but the last); True when the values of every computed position came."""
        computed = request.n_prompt + n_tokens - 1
        values = request.values
        if self.store is None or request.watch.n_server != len(self.watched) or request.steer is not None:
            return values.covered >= computed
        n = min(values.covered, computed)
        sequence = [*request.prompt_ids, *tokens][:n]
        self.store.put(sequence, values.pre[:n, : len(self.watched)], values.active[:n, : len(self.watched)])
        return values.covered >= computed

    def _observe(self, report: MonitorReport, waited_s: float) -> None:
        if self._sink is not None:
            n = len(self.watched)
            server = MonitorReport(
                report.features[:n],
                stopped_by=report.stopped_by
                if any(r.watched.name == report.stopped_by for r in report.features[:n])
                else None,
            )
            if server.features:
                self._sink(server, waited_s)


class MonitoredRequest:
    """One monitored request: the generation engine's `circuit_serve.domain.monitor.WatchedRequest`."""

    def __init__(
        self,
        monitor: EngineMonitor,
        watch: WatchRequest,
        args: RequestWatchArgs,
        values: RequestValues,
        own: list[FeatureRef],
        decode: Decode,
        *,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        extended: bool,
        route: Route | None,
        salt: str | None,
        steer: SteerArgs | None = None,
    ) -> None:
        self.monitor, self.watch, self.args, self.values, self.own = monitor, watch, args, values, own
        self._decode = decode
        self.prompt_ids, self.n_prompt = prompt_ids, len(prompt_ids)
        self.max_new_tokens, self.extended = max_new_tokens, extended
        self.route, self._salt = route, salt
        self.steer = steer  # interventions applied in the engine (None: not steered)
        self.stored = False  # the values of every computed block were stored (finish)
        self._handed_out = 0  # positions whose values went out in chunks
        self._closed = False

    def sampling_overrides(self, ignore_eos: bool) -> dict[str, Any]:
        """Changes to this request's vLLM SamplingParams (see the module docstring, step 1)."""
        out: dict[str, Any] = {"extra_args": {EXTRA_KEY: self.args.to_extra()}}
        if self.steer is not None:
            out["extra_args"][STEER_KEY] = self.steer.to_extra()
        if self.extended:
            out["max_tokens"] = self.max_new_tokens + 1
        if ignore_eos and self.args.sentinel >= 0:
            out["stop_token_ids"] = [self.args.sentinel]
        return out

    @property
    def cache_salt(self) -> str | None:
        """vLLM's `cache_salt` for the request (None: it shares every cached block; see `block_store`)."""
        return self._salt

    @property
    def reuses_cache(self) -> bool:
        return self.route is not None and self.route.kind != PRIVATE

    def step(self, chunk: GenerationChunk) -> GenerationChunk:
        """A chunk before the last, with the values computed since the previous one (when asked for)."""
        if not self.watch.values:
            return chunk
        return dataclasses.replace(chunk, activations=self._take_values())

    async def finish(self, chunk: GenerationChunk, tokens: list[int], text: list[str]) -> GenerationChunk:
        """The last chunk cut at the outcome (step 3 of the module docstring); `tokens` and `text`
        (the whole completion so far) are cut in place."""
        assert chunk.finish_reason is not None
        outcome = await self._outcome(len(tokens), chunk.finish_reason)
        self.stored = self.monitor._keep(self, len(tokens), tokens)
        return cut(chunk, tokens, text, outcome, self._decode)

    def _take_values(self, limit: int | None = None) -> tuple[WatchedValues, ...]:
        """Values of positions computed since the last call (up to `limit`), when asked for."""
        stop = self.values.covered if limit is None else min(self.values.covered, limit)
        if not self.watch.values or stop <= self._handed_out:
            return ()
        start, self._handed_out = self._handed_out, stop
        acts = self.values.activations(start, stop)
        return tuple(WatchedValues(start + i, tuple(float(v) for v in row)) for i, row in enumerate(acts))

    async def _outcome(self, n_tokens: int, vllm_reason: FinishReason) -> Outcome:
        """The outcome once vLLM has finished the request with `n_tokens` sampled tokens."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        computed = self.n_prompt + n_tokens - 1  # every position but the last sampled token's
        if not await self.values.wait_for(computed, _VALUES_TIMEOUT_S):
            log.error("monitor values of %s stopped at position %d of %d", self.args.rid, self.values.covered, computed)
        waited = loop.time() - t0
        kept, reason, stopped_by = n_tokens, vllm_reason, None
        if self.values.fired is not None:
            column, position = self.values.fired
            kept, reason = max(position - self.n_prompt + 1, 0), FinishReason.FEATURE_RULE
            stopped_by = self.watch.features[column].name
        elif self.extended and n_tokens > self.max_new_tokens:
            kept, reason = self.max_new_tokens, FinishReason.LENGTH
        end = min(self.n_prompt + kept, self.values.covered)
        report = self._report(end, stopped_by)
        self.monitor._observe(report, waited)
        return Outcome(kept, reason, report, self._take_values(limit=self.n_prompt + kept))

    def _report(self, end: int, stopped_by: str | None) -> MonitorReport:
        acts = self.values.activations(0, end)  # (end, k)
        thresholds = np.asarray([w.threshold for w in self.watch.features], dtype=np.float32)
        above = acts > thresholds  # (end, k)
        maxima = acts.max(axis=0) if end else np.zeros(len(thresholds), dtype=np.float32)
        reports = []
        for i, w in enumerate(self.watch.features):
            positions = above[:, i].nonzero()[0].tolist()
            reports.append(
                FeatureReport(
                    watched=w,
                    max_activation=float(maxima[i]),
                    prompt_positions=tuple(p for p in positions if p < self.n_prompt),
                    completion_positions=tuple(p - self.n_prompt for p in positions if p >= self.n_prompt),
                    steered_from=self.values.steered.get(i) if positions else None,  # it fired inside the kept span
                )
            )
        return MonitorReport(tuple(reports), stopped_by=stopped_by)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.monitor._release(self)


class SteeredRequest:
    """A steered request without a watch: the generation engine's `WatchedRequest` that only
    carries the interventions to vLLM (chunks pass through unchanged)."""

    def __init__(self, steer: SteerArgs, salt: str) -> None:
        self.steer, self._salt = steer, salt

    @property
    def cache_salt(self) -> str | None:
        return self._salt

    def sampling_overrides(self, ignore_eos: bool) -> dict[str, Any]:
        return {"extra_args": {STEER_KEY: self.steer.to_extra()}}

    def step(self, chunk: GenerationChunk) -> GenerationChunk:
        return chunk

    async def finish(self, chunk: GenerationChunk, tokens: list[int], text: list[str]) -> GenerationChunk:
        return chunk

    def close(self) -> None:
        pass


def _first_stop(route: Route | None, watch: WatchRequest, stop: list[int]) -> tuple[int, int] | None:
    """The first (column index, position) where a stop rule fires on the stored prompt positions."""
    if route is None or not stop or not len(route.pre):
        return None
    cols = np.asarray(stop)
    value = np.where(route.active[:, cols], route.pre[:, cols], np.float32(0))  # (P, s)
    hits = value > np.asarray([watch.features[i].threshold for i in stop], dtype=np.float32)
    rows = hits.any(axis=1).nonzero()[0]
    if not rows.size:
        return None
    position = int(rows[0])
    return stop[int(hits[position].nonzero()[0][0])], position


def cut(
    chunk: GenerationChunk, tokens: list[int], text: list[str], outcome: Outcome, decode: Decode
) -> GenerationChunk:
    """The last chunk of a monitored request, cut to `outcome.kept` tokens; `tokens` and `text`
    (the whole completion so far) are cut in place."""
    drop = len(tokens) - outcome.kept
    n_new = len(chunk.token_ids)
    if drop > n_new:  # cannot happen: only the last sampled token is ever dropped
        log.error("monitor outcome of %s drops %d tokens but the last chunk has %d", chunk.request_id, drop, n_new)
        drop = n_new
    tail = ""
    if drop > 0:
        full = decode(tokens)
        short = decode(tokens[: len(tokens) - drop])
        tail = full[len(short) :] if full.startswith(short) else ""
        del tokens[len(tokens) - drop :]
    chunk_text = chunk.text[: len(chunk.text) - len(tail)] if tail and chunk.text.endswith(tail) else chunk.text
    text[-1] = chunk_text
    return dataclasses.replace(
        chunk,
        text=chunk_text,
        token_ids=chunk.token_ids[: n_new - drop],
        logprobs=chunk.logprobs[: max(len(chunk.logprobs) - drop, 0)] if chunk.logprobs else (),
        finish_reason=outcome.finish_reason,
        stop_sequence=None if outcome.finish_reason is FinishReason.FEATURE_RULE else chunk.stop_sequence,
        usage=Usage(chunk.usage.prompt_tokens if chunk.usage else 0, len(tokens)),
        activations=outcome.activations,
        monitor=outcome.report,
    )
