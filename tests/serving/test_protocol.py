"""The committed generated code matches the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():
    spec = importlib.util.spec_from_file_location("protos_gen", ROOT / "protos" / "gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh():
    stale = _gen_module().stale_files()
    assert not stale, f"generated code is stale; run `.venv/bin/python protos/gen.py`: {stale}"


def test_client_needs_only_grpc_and_protobuf():
    """Importing the client must not pull in the server's dependencies."""
    import subprocess
    import sys

    code = (
        "import sys, circuit_client, circuit_client.cli\n"
        "heavy = [m for m in ('torch', 'vllm', 'transformers', 'circuit_serve') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
