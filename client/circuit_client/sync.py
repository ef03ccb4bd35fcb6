"""Blocking client.

with CircuitClient("localhost:50051") as client:
    print(client.generate("The capital of France is", Sampling(max_new_tokens=8, temperature=0)).text)
    for chunk in client.stream("Once upon a time"):
        print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

from circuit_client._channel import ServiceClient
from circuit_client.generation import GenerationCalls


class CircuitClient(GenerationCalls, ServiceClient):
    """The calls of generation.py, each returning its result; a stream is an iterator."""
