"""The generation engine: vLLM's async engine behind a small protobuf-free interface."""

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

__all__ = [
    "CompletionRecord",
    "EngineLoad",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "GenerationResult",
    "ModelDescription",
    "SamplingOptions",
    "TokenLogprobs",
    "Usage",
]
