"""`Steer` served by vLLM: the steered and the default completion are two requests in vLLM's batch.

The interventions mean what they mean on the replacement model (`steering`); inside vLLM they
are applied in the forward pass by the monitoring plugin (`circuit_serve.monitoring.steer`), for
the steered request's tokens only, and that request never reuses cached blocks of other requests.

Steps of `steer`:
1. the query was checked and tokenized by `FeaturesEngine.check_steer` (the replacement model's
   tokenizer, BOS first), so intervention positions index the same ids as on the replacement path;
2. the steered request and, when asked, the default one (no interventions, the same sampling and
   seed) are submitted together: vLLM batches them; when one fails the other is aborted;
3. each completion's ids are decoded as the replacement path decodes them (`decode`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from circuit_serve.domain.features import Intervention
from circuit_serve.domain.generation import GenerationRequest, GenerationResult, SamplingOptions
from circuit_serve.features.steering import Completion, Sampling, SteerResult


class SteeringGenerator(Protocol):
    """What Steer needs of the generation engine (generation.GenerationEngine)."""

    def steers(self, n_prompt: int, max_new_tokens: int) -> bool:
        """Whether a steered request of this size runs inside vLLM."""
        ...

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...


async def steer(
    generation: SteeringGenerator,
    prompt_ids: Sequence[int],
    interventions: Sequence[Intervention],
    sampling: Sampling,
    *,
    with_default: bool,
    decode: Callable[[Sequence[int]], str],
) -> SteerResult:
    """The steered completion and, when asked, the default one, generated together by vLLM."""
    options = SamplingOptions(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
    )

    def request(ivs: Sequence[Intervention]) -> GenerationRequest:
        return GenerationRequest(prompt_token_ids=tuple(prompt_ids), sampling=options, interventions=tuple(ivs))

    asks = [request(interventions), *([request(())] if with_default else [])]
    tasks = [asyncio.ensure_future(generation.generate(r)) for r in asks]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:  # one failed (or the call was cancelled): abort the other in vLLM
        for task in tasks:
            task.cancel()
        raise
    steered, *default = (Completion(r.token_ids, decode(r.token_ids)) for r in results)
    return SteerResult(tuple(prompt_ids), steered, default[0] if default else None)
