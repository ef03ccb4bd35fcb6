"""GenerationEngine: vLLM's AsyncLLM behind a protobuf-free interface.

    engine = GenerationEngine(config, stats_sink=metrics.observe_step)
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

from circuit_serve.chat import ChatMessage, chat_token_ids
from circuit_serve.config.serve import EngineConfig
from circuit_serve.errors import BackendUnavailable, InvalidRequest
from circuit_serve.generation.vllm_version import check_vllm_version
from circuit_serve.generation.stats import StatsSink, StepStats, stat_logger_factory
from circuit_serve.generation.types import (
    CompletionRecord,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ModelDescription,
    SamplingOptions,
    TokenLogprobs,
    Usage,
)
from circuit_serve.generation.validate import Limits, check_prompt_length, check_request

log = logging.getLogger(__name__)

FinishListener = Callable[[CompletionRecord], None]

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT,
           "repetition": FinishReason.STOP}


class GenerationEngine:
    def __init__(self, config: EngineConfig, *, stats_sink: StatsSink | None = None) -> None:
        self.config = config
        self._stats_sink = stats_sink
        self._llm: Any = None  # vllm AsyncLLM once started
        self._tokenizer: Any = None
        self._limits: Limits | None = None
        self._description: ModelDescription | None = None
        self._last_load = EngineLoad(0, 0)
        self._listeners: list[FinishListener] = []

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Build the vLLM engine (in a worker thread, so the event loop keeps serving health checks)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        check_vllm_version()  # raises UntestedVllm before touching vLLM's internals
        args = AsyncEngineArgs(**self.config.engine_kwargs(), disable_log_stats=True)
        loggers = [stat_logger_factory(self._on_step)]
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=loggers)
        self._tokenizer = self._llm.get_tokenizer()
        model_config = self._llm.model_config
        self._limits = Limits(
            vocab_size=model_config.get_vocab_size(),
            max_model_len=model_config.max_model_len,
            max_new_tokens_limit=self.config.max_new_tokens_limit,
            max_top_logprobs=self.config.max_top_logprobs,
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
        )
        log.info("model loaded: %s", self._description)

    @property
    def ready(self) -> bool:
        return self._description is not None

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        self._description = None

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

    def tokenize_chat(self, messages: Sequence[ChatMessage]) -> tuple[list[int], list[str]]:
        """Token ids and strings of chat messages (as Generate renders them)."""
        ids = self.chat_tokens(messages)
        return ids, list(self._tokenizer.convert_ids_to_tokens(ids))

    def chat_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of chat messages under the model's chat template (generation prompt added)."""
        self._require_ready()
        return chat_token_ids(self._tokenizer, messages)

    def prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt ids vLLM is given for `request` (checked against max_model_len)."""
        self._require_ready()
        assert self._limits is not None
        if request.messages:
            ids, name = self.chat_tokens(request.messages), "messages"
        elif request.prompt_token_ids:
            ids, name = list(request.prompt_token_ids), "prompt_token_ids"
        else:
            ids, name = list(self._tokenizer.encode(request.prompt)), "prompt"
        check_prompt_length(len(ids), self._limits, field=name)
        return ids

    def load(self) -> EngineLoad:
        """Requests running and waiting in the scheduler right now (safe to call from any thread)."""
        llm = self._llm
        if llm is None or llm.output_processor.get_num_unfinished_requests() == 0:
            return EngineLoad(0, 0)  # vLLM reports no step when it goes idle; nothing is in flight
        return self._last_load

    # ---- generation ------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole completion (vLLM sends only the final output)."""
        from vllm.sampling_params import RequestOutputKind

        last = None
        async for last in self._run(request, RequestOutputKind.FINAL_ONLY):
            pass
        assert last is not None
        return last.as_result()

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Token deltas as vLLM produces them; the last chunk carries finish reason and usage.

        Closing the iterator early (or cancelling its consumer) aborts the request in vLLM.
        """
        from vllm.sampling_params import RequestOutputKind

        return self._run(request, RequestOutputKind.DELTA)

    async def _run(self, request: GenerationRequest, output_kind: Any) -> AsyncIterator[GenerationChunk]:
        self._require_ready()
        assert self._limits is not None
        check_request(request, self._limits)
        prompt_ids = self.prompt_token_ids(request)

        request_id = f"gen-{uuid.uuid4().hex}"
        params = _sampling_params(request.sampling, output_kind)
        tokens: list[int] = []
        text: list[str] = []
        outputs = self._llm.generate({"prompt_token_ids": prompt_ids}, params, request_id=request_id)
        async with contextlib.aclosing(outputs):
            try:
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
                    if finish is not None:
                        self._notify(CompletionRecord(
                            request_id=request_id,
                            prompt_token_ids=tuple(prompt_ids),
                            token_ids=tuple(tokens),
                            text="".join(text),
                            finish_reason=finish,
                            sampling=request.sampling,
                        ))
                    yield chunk
            except _engine_dead_errors() as exc:
                raise BackendUnavailable(f"the generation engine stopped: {exc}") from exc
            except _vllm_client_errors() as exc:
                raise InvalidRequest(str(exc)) from exc

    # ---- internals -------------------------------------------------------------

    def _require_ready(self) -> None:
        if self._description is None:
            raise BackendUnavailable("the model is not loaded yet (or the server is shutting down); retry shortly")

    def _on_step(self, step: StepStats) -> None:
        if step.running is not None and step.waiting is not None:
            self._last_load = EngineLoad(step.running, step.waiting)
        if self._stats_sink is not None:
            self._stats_sink(step)

    def _notify(self, record: CompletionRecord) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a listener must never break serving
                log.exception("finish listener %r failed for %s", listener, record.request_id)


def _sampling_params(s: SamplingOptions, output_kind: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
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
        out.append(TokenLogprobs(
            token_id=token_id,
            logprob=chosen.logprob if chosen is not None else float("nan"),
            top=tuple((tid, lp.decoded_token or "", lp.logprob) for tid, lp in top),
        ))
    return tuple(out)


def _engine_dead_errors() -> tuple[type[BaseException], ...]:
    from vllm.v1.engine.exceptions import EngineDeadError

    return (EngineDeadError,)


def _vllm_client_errors() -> tuple[type[BaseException], ...]:
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError,)
