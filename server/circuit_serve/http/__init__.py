"""The OpenAI-compatible HTTP front door (`--http-port`): same loop, engine, tokens and TLS as gRPC."""

from circuit_serve.http.server import HttpFrontDoor

__all__ = ["HttpFrontDoor"]
