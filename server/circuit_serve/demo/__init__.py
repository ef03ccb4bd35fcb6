"""The demo model: a small Hugging Face model that runs offline (see random_model)."""

from circuit_serve.demo.random_model import build_demo_model

__all__ = ["build_demo_model"]
