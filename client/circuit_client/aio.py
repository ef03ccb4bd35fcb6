"""asyncio client: the same calls as `CircuitClient`, awaitable.

async with AsyncCircuitClient("localhost:50051") as client:
    async for chunk in client.stream("Once upon a time", Sampling(max_new_tokens=32)):
        print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

from circuit_client._channel import AsyncServiceClient
from circuit_client.generation import GenerationCalls


class AsyncCircuitClient(GenerationCalls, AsyncServiceClient):
    """The calls of generation.py, each awaitable; a stream is an async iterator."""
