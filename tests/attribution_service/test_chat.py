"""Chat messages through a real server: the same tokens for generation, Tokenize, the audit of a
chat completion by request_id, attribution and feature activations (real vLLM, transcoders)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from circuit_client import ChatMessage, CircuitClient, CircuitRpcError, Sampling
from circuit_client.attribution import AttributionClient, AttributionSettings
from circuit_client.features import FeaturesClient

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "What is the capital of France?")]
SMALL = AttributionSettings(max_feature_nodes=32, batch_size=32)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chat_model_dir(random_model_dir, tmp_path_factory):
    """The random demo model with a chat template that writes BOS itself."""
    d = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(random_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def expected_ids(chat_model_dir) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_model_dir))
    out = tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in MESSAGES], add_generation_prompt=True, tokenize=True
    )
    ids = list(out["input_ids"] if hasattr(out, "keys") else out)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS, written by the template
    return ids


@pytest.fixture(scope="module")
def hub_commit(random_model_dir, tmp_path_factory):
    """An offline HF_HOME holding the server's transcoders as repo test-org/chat-tcs."""
    from support.hub_cache import add_repo

    from circuit_serve.demo.random_transcoders import write_random_transcoders

    tcs = write_random_transcoders(random_model_dir, tmp_path_factory.mktemp("chat-tcs"), d_transcoder=128, seed=1)
    home = tmp_path_factory.mktemp("hf_home")
    commit = add_repo(home / "hub", "test-org/chat-tcs", {p.name: p for p in tcs.iterdir()})
    return home, commit


@pytest.fixture(scope="module")
def chat_server(launch_server, chat_model_dir, hub_commit):
    """Transcoders by repo id from the offline hub cache (the server process inherits HF_HOME)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(hub_commit[0]))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HF_HUB_CACHE", raising=False)
        return launch_server(
            "--transcoders",
            "test-org/chat-tcs",
            "--attribution-max-prompt-tokens",
            "128",
            "--attribution-memory-budget-gib",
            "0.25",
            model_dir=chat_model_dir,
        )


def test_model_info_reports_the_transcoder_set(chat_server, hub_commit):
    with CircuitClient(chat_server.target) as client:
        t = client.model_info().transcoders
    assert t is not None
    assert (t.name, t.revision, t.kind) == ("test-org/chat-tcs", hub_commit[1], "transcoder_set")
    assert (t.num_layers, t.features_per_layer, t.d_model) == (2, 128, 128)
    assert (t.feature_input_hook, t.feature_output_hook) == ("hook_resid_mid", "mlp.hook_out")
    assert (t.activation, t.dtype, t.lazy_decoder, t.skip_connection) == ("jumprelu", "float32", True, False)


def test_tokenize_and_generate_use_the_chat_template(chat_server, expected_ids):
    with CircuitClient(chat_server.target) as client:
        assert list(client.tokenize(messages=MESSAGES).token_ids) == expected_ids
        chat = client.generate(
            sampling=Sampling(max_new_tokens=5, temperature=0), messages=[(m.role, m.content) for m in MESSAGES]
        )
        by_ids = client.generate(sampling=Sampling(max_new_tokens=5, temperature=0), prompt_token_ids=expected_ids)
    assert chat.usage.prompt_tokens == len(expected_ids)
    assert chat.token_ids == by_ids.token_ids


def test_audit_of_a_chat_completion_uses_the_same_tokens(chat_server, expected_ids):
    with CircuitClient(chat_server.target) as client:
        gen = client.generate(
            sampling=Sampling(max_new_tokens=4, temperature=0),
            messages=[{"role": m.role, "content": m.content} for m in MESSAGES],
        )
    k = 2
    with AttributionClient(chat_server.target, timeout=300) as graphs:
        audited, chat = [], []
        graphs.attribute(None, SMALL, request_id=gen.request_id, token_index=k, on_event=audited.append)
        graphs.attribute(None, SMALL, messages=MESSAGES, on_event=chat.append)
    assert list(audited[0].token_ids) == [*expected_ids, *gen.token_ids[:k]]
    assert audited[0].audited_token_id == gen.token_ids[k]
    assert list(chat[0].token_ids) == expected_ids
    with FeaturesClient(chat_server.target) as features:
        rows = features.activations(messages=MESSAGES, top_k=2)
    assert [r.token_id for r in rows] == expected_ids


def test_bad_chat_requests_are_invalid_argument(chat_server, server):
    with CircuitClient(chat_server.target) as client:
        with pytest.raises(CircuitRpcError) as err:
            client.generate("text too", messages=MESSAGES)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not several" in err.value.details
        with pytest.raises(CircuitRpcError) as err:
            client.generate(messages=[("", "no role")])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "no role" in err.value.details
    with CircuitClient(server.target) as plain:  # the demo model's tokenizer has no chat template
        with pytest.raises(CircuitRpcError) as err:
            plain.generate(messages=MESSAGES)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "no chat template" in err.value.details
        assert plain.generate("still serving", Sampling(max_new_tokens=1)).token_ids


def test_clis_accept_messages(chat_server, chat_model_dir, random_model_dir, tmp_path, expected_ids):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "client"), str(ROOT)])}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_client.cli",
            "tokenize",
            "--target",
            chat_server.target,
            "--message",
            "system:Answer briefly.",
            "--message",
            "user:What is the capital of France?",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert [int(line.split("\t")[0]) for line in r.stdout.splitlines()] == expected_ids
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    tcs = write_random_transcoders(random_model_dir, tmp_path / "tcs", d_transcoder=64, seed=2)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_serve.cli",
            "attribute",
            "--model",
            str(chat_model_dir),
            "--transcoders",
            str(tcs),
            "--message",
            "system:Answer briefly.",
            "--message",
            "user:What is the capital of France?",
            "--max-feature-nodes",
            "16",
            "--out",
            str(tmp_path / "g.json"),
            "--no-progress",
        ],
        env={**env, "CIRCUIT_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "g.json").read_text())["metadata"]
    assert len(meta["prompt_tokens"]) == len(expected_ids)
