"""circuit-serve: one open-weight model served with vLLM, with attribution graphs,
feature monitoring and steering on the same model."""

__version__ = "0.1.0"
