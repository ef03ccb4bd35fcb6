"""FeaturesEngine: feature activations, watched-feature activations and steering on the
attribution engine's `ReplacementModel` (synchronous; callers run it off the event loop).

Every activation here comes from `ReplacementModel.feature_activations`, the values the
attribution graph of the same tokens uses (position 0, the BOS token, is zero there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.domain.chat import ChatMessage
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.domain.features import FeatureRef, TranscoderShape, check_intervention_limits
from circuit_serve.domain.generation_checks import MAX_TEMPERATURE
from circuit_serve.domain.input_checks import check_count, check_text_bytes
from circuit_serve.features import steering
from circuit_serve.features.labels import Labels
from circuit_serve.features.steering import Intervention, Sampling, SteerResult
from circuit_serve.features.target import ModelTarget
from circuit_serve.tracing.replacement import FeatureActivations, ReplacementModel


@dataclass(frozen=True)
class TokensInput:
    """Exactly one of a prompt (tokenized as generation does, BOS first) and token ids."""

    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[ChatMessage, ...] | None = None  # rendered with the model's chat template


@dataclass(frozen=True)
class FeatureValue:
    feature: FeatureRef
    activation: float
    label: str = ""


@dataclass(frozen=True)
class PositionActivations:
    position: int
    token_id: int
    token: str
    values: tuple[FeatureValue, ...]


@dataclass(frozen=True)
class SteerQuery:
    input: TokensInput
    interventions: tuple[Intervention, ...]
    sampling: Sampling = Sampling()
    with_default: bool = False


class FeaturesEngine:
    def __init__(
        self,
        rm: ReplacementModel,
        *,
        labels: Labels | None = None,
        config: FeaturesConfig | None = None,
        limits: InputLimits | None = None,
    ) -> None:
        self.rm = rm
        self.limits = limits or InputLimits()
        self.labels = labels or Labels()
        self.config = config or FeaturesConfig()
        self.shape = TranscoderShape(rm.transcoders.n_layers, rm.transcoders.d_transcoder)
        self.target = ModelTarget.of(rm)

    # ---- inputs --------------------------------------------------------------------------

    def tokens(self, given: TokensInput, *, max_tokens: int | None = None) -> list[int]:
        """The ids the replacement model runs on (BOS first), validated: sizes before tokenizing,
        then at most `max_tokens` (default: FeaturesConfig.max_prompt_tokens) with BOS."""
        if sum(map(bool, (given.prompt, given.token_ids, given.messages))) != 1:
            raise InvalidRequest("give exactly one of prompt, prompt_token_ids and messages", field="prompt")
        limit = max_tokens or self.config.max_prompt_tokens
        check_text_bytes(given.prompt, self.limits.max_prompt_bytes, field="prompt")
        check_count(given.token_ids, limit, field="prompt_token_ids", what="token ids")
        if given.messages:
            ids, _ = self.rm.check_tokens(self.rm.chat_tokens(given.messages))
            if len(ids) > limit:
                raise InvalidRequest(
                    f"is {len(ids)} tokens with BOS; the limit is {limit} tokens; shorten it", field="messages"
                )
            return ids.tolist()
        ids, _ = self.rm.check_tokens(given.prompt if given.prompt else list(given.token_ids or ()))
        if len(ids) > limit:
            raise InvalidRequest(
                f"is {len(ids)} tokens with BOS; the limit is {limit} tokens; shorten it", field="prompt"
            )
        return ids.tolist()

    def check_features(self, features: Sequence[FeatureRef], *, field: str = "features") -> None:
        for i, f in enumerate(features):
            if (problem := self.shape.check(f, where=f"{field}[{i}]")) is not None:
                raise InvalidRequest(problem)

    # ---- activations ---------------------------------------------------------------------

    def feature_activations(
        self, given: TokensInput, *, features: Sequence[FeatureRef] = (), top_k: int = 0
    ) -> list[PositionActivations]:
        """Per position: the listed features' values (zeros included) or the top-k active ones."""
        if bool(features) == bool(top_k):
            raise InvalidRequest("give exactly one of features (a list) and top_k (> 0)", field="features")
        if len(features) > self.config.max_listed_features:
            raise InvalidRequest(
                f"lists {len(features)} features; the limit is {self.config.max_listed_features}", field="features"
            )
        if top_k > self.config.max_top_k:
            raise InvalidRequest(f"is {top_k}; allowed range is [1, {self.config.max_top_k}]", field="top_k")
        self.check_features(features)
        ids = self.tokens(given)
        fa = self.rm.feature_activations(ids)  # ids start with BOS: one position per id
        tokens = [self.rm.decode_token(t) for t in ids]
        if features:
            dense = _dense(fa, features)  # (P, k)
            rows = [
                [FeatureValue(f, float(dense[p, j]), self.labels.get(f)) for j, f in enumerate(features)]
                for p in range(len(ids))
            ]
        else:
            rows = [[] for _ in ids]
            for (layer, pos, index), value in zip(fa.indices.tolist(), fa.values.tolist()):
                f = FeatureRef(layer, index)
                rows[pos].append(FeatureValue(f, value, self.labels.get(f)))
            rows = [sorted(r, key=lambda v: (-v.activation, v.feature))[:top_k] for r in rows]
        return [PositionActivations(p, t, tokens[p], tuple(rows[p])) for p, t in enumerate(ids)]

    # ---- steering ------------------------------------------------------------------------

    def check_steer(self, query: SteerQuery, max_tokens: int) -> list[int]:
        """Validate a steering request before it is admitted; returns the prompt ids."""
        s, cfg = query.sampling, self.config
        if not 1 <= s.max_new_tokens <= cfg.max_steer_new_tokens:
            raise InvalidRequest(
                f"is {s.max_new_tokens}; allowed range is [1, {cfg.max_steer_new_tokens}]", field="max_new_tokens"
            )
        if not (math.isfinite(s.temperature) and 0 <= s.temperature <= MAX_TEMPERATURE):
            raise InvalidRequest(
                f"is {s.temperature}; must be >= 0 and <= {MAX_TEMPERATURE:g} (0 = greedy)", field="temperature"
            )
        if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
            raise InvalidRequest(f"is {s.top_p}; allowed range is (0, 1]", field="top_p")
        check_intervention_limits(
            query.interventions, max_count=cfg.max_interventions, max_positions=self.limits.max_positions
        )
        ids = self.tokens(query.input, max_tokens=max_tokens)
        if len(ids) + s.max_new_tokens > max_tokens:
            raise InvalidRequest(
                f"prompt ({len(ids)} tokens with BOS) + max_new_tokens ({s.max_new_tokens}) is above this "
                f"server's limit of {max_tokens} tokens; shorten the prompt or ask for fewer tokens",
                field="max_new_tokens",
            )
        steering.validate(query.interventions, len(ids), self.shape)
        return ids

    def steer(
        self, query: SteerQuery, prompt_ids: Sequence[int], should_stop: Callable[[], bool] | None = None
    ) -> SteerResult:
        return steering.steer(
            self.target,
            prompt_ids,
            query.interventions,
            query.sampling,
            with_default=query.with_default,
            should_stop=should_stop,
        )


def _dense(fa: FeatureActivations, features: Sequence[FeatureRef]) -> torch.Tensor:
    """`(n_pos, len(features))` values of `features` from the sparse activations."""
    out = torch.zeros(fa.n_pos, len(features))
    if not features or fa.values.numel() == 0:
        return out
    width = fa.d_transcoder
    keys = fa.indices[:, 0] * width + fa.indices[:, 2]  # (n,)
    wanted = torch.tensor([f.layer * width + f.index for f in features])  # (k,)
    match = keys[:, None] == wanted[None, :]  # (n, k)
    rows, cols = match.nonzero(as_tuple=True)
    out[fa.indices[rows, 1], cols] = fa.values[rows]
    return out
