"""Token ids of recently served generations, for attributing a token of a response."""

from circuit_serve.completions.store import CompletionStore, ServedCompletion

__all__ = ["CompletionStore", "ServedCompletion"]
