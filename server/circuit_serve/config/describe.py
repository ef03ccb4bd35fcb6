"""Every input limit in force, by the field names of `circuit.v1.Limits` (ModelInfo)."""

from __future__ import annotations

from circuit_serve.config.serve import ServeConfig
from circuit_serve.domain.generation_checks import MAX_TEMPERATURE


def describe_limits(config: ServeConfig, *, max_model_len: int, vocab_size: int) -> dict[str, float]:
    lim, att, feat = config.limits, config.attribution, config.features
    return {
        "max_request_bytes": lim.max_request_bytes,
        "max_prompt_bytes": lim.max_prompt_bytes,
        "max_concurrent_rpcs": lim.max_concurrent_rpcs,
        "executor_threads": lim.executor_threads,
        "max_executor_queue": lim.max_executor_queue,
        "generation_max_prompt_tokens": max_model_len - 1,
        "generation_max_new_tokens": config.engine.max_new_tokens_limit,
        "generation_max_top_logprobs": config.engine.max_top_logprobs,
        "generation_max_temperature": MAX_TEMPERATURE,
        "generation_max_top_k": vocab_size,
        "generation_max_stop_strings": lim.max_stop_strings,
        "generation_max_stop_chars": lim.max_stop_chars,
        "attribution_max_prompt_tokens": att.max_prompt_tokens,
        "attribution_max_feature_nodes": att.max_feature_nodes_limit,
        "attribution_max_batch_size": att.max_batch_size,
        "attribution_max_targets": lim.max_targets,
        "attribution_memory_budget_bytes": att.memory_budget_bytes,
        "attribution_max_queued": att.max_queued,
        "max_request_id_bytes": lim.max_request_id_bytes,
        "features_max_prompt_tokens": feat.max_prompt_tokens,
        "features_max_top_k": feat.max_top_k,
        "features_max_listed": feat.max_listed_features,
        "steer_max_tokens": att.max_prompt_tokens,
        "steer_max_new_tokens": feat.max_steer_new_tokens,
        "steer_max_interventions": feat.max_interventions,
        "steer_max_positions": lim.max_positions,
        "steer_max_temperature": MAX_TEMPERATURE,
    }
