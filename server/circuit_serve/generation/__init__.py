"""The generation engine: vLLM's async engine behind a small protobuf-free interface.

Its request and result types live in the domain core (`circuit_serve.domain.generation`).
"""
