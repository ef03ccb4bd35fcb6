"""A live server's /metrics: vLLM's own names and labels, each family once, and every metric and label
the chart's dashboard, alerts and KEDA queries use (the README's table).

One server for the module: the demo model with random transcoders, a one-feature watchlist and auth
tokens on (so every family of the table has its series), after a little traffic.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from circuit_client import CircuitClient, CircuitRpcError, Credentials, Sampling
from circuit_client.attribution import AttributionClient, AttributionSettings
from circuit_serve.auth.tokens import token_sha256
from circuit_serve.config.serve import EngineConfig
from circuit_serve.demo.random_transcoders import write_random_transcoders
from circuit_serve.generation.vllm_version import TESTED_VLLM, check_vllm_version
from tests.deploy.promql import TARGET_LABELS, metric_table

TOKEN = "tok-live-metrics-5f1c9a7e3b2d4c6a8e0f"
# What a server exports beyond vLLM's logger and our own `circuit_*` metrics.
STANDARD_PREFIXES = ("process_", "python_")


@pytest.fixture(scope="module")
def live(launch_server, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("live-metrics")
    tc = write_random_transcoders(demo_model_dir, tmp / "tc", d_transcoder=128, target_l0=8, seed=7)
    watchlist = tmp / "watchlist.yaml"
    watchlist.write_text("- {name: w0, layer: 0, index: 0, threshold: 0.0, action: record}\n")
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps([{"name": "ops", "sha256": token_sha256(TOKEN), "scopes": ["admin"]}]))
    server = launch_server(
        "--transcoders",
        str(tc),
        "--watchlist",
        str(watchlist),
        "--auth-tokens",
        str(tokens),
        "--attribution-max-prompt-tokens",
        "64",
        credentials=Credentials(token=TOKEN),
    )
    creds = Credentials(token=TOKEN)
    with CircuitClient(server.target, credentials=creds) as client:  # a little traffic
        client.generate("the old river", Sampling(max_new_tokens=4, ignore_eos=True))
        list(client.stream("the old river", Sampling(max_new_tokens=4, ignore_eos=True), monitor=True))
    with AttributionClient(server.target, credentials=creds) as attribution:
        attribution.attribute("the old river", AttributionSettings(max_n_logits=2, batch_size=16))
    with CircuitClient(server.target, retries=0) as anonymous, pytest.raises(CircuitRpcError):
        anonymous.generate("x", Sampling(max_new_tokens=1))
    return server


def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Family name -> (type, label names over its samples) of a Prometheus text scrape."""
    out = {}
    for f in text_string_to_metric_families(text):
        if not f.name.endswith("_created"):  # the text parser reads counters' creation times as families
            out[f.name] = (f.type, frozenset(k for s in f.samples for k in s.labels))
    return out


def vllm_reference(model_dir: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """The families vLLM's own PrometheusStatLogger registers, built here from vLLM itself for the
    same model and engine settings the server uses (the installed vLLM, the version the server pins)."""
    from vllm import AsyncEngineArgs
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    config = EngineConfig(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True, kv_cache_gib=1.0)
    logger = PrometheusStatLogger(AsyncEngineArgs(**config.engine_kwargs()).create_engine_config())
    logger.log_engine_initialized()
    out = {}
    for f in REGISTRY.collect():
        if f.name.startswith("vllm:") and f.samples and not f.name.endswith("_created"):
            out[f.name] = (f.type, frozenset(k for s in f.samples for k in s.labels))
    return out


def test_vllm_metrics_under_vllm_names_and_labels(live, demo_model_dir):
    assert check_vllm_version().split("+")[0] == TESTED_VLLM == "0.32.0"
    reference = vllm_reference(demo_model_dir)
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds"} <= set(
        reference
    )
    served = {name: kind for name, kind in families(live.metrics()).items() if name.startswith("vllm:")}
    assert served == reference  # the same families, types and label names as vLLM's own logger
    model_names = {
        s.labels["model_name"]
        for f in text_string_to_metric_families(live.metrics())
        if f.name == "vllm:num_requests_running"
        for s in f.samples
    }
    assert model_names == {demo_model_dir.name}  # the served model name


def test_no_family_twice(live):
    text = live.metrics()
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    repeated = [name for name, n in collections.Counter(declared).items() if n > 1]
    assert not repeated
    names = set(families(text))
    vllm_tails = {name.removeprefix("vllm:") for name in names if name.startswith("vllm:")}
    copies = {name for name in names if name.startswith("circuit_") and name.removeprefix("circuit_") in vllm_tails}
    assert not copies  # no vLLM metric served twice under two names
    others = {n for n in names if not n.startswith(("vllm:", "circuit_", *STANDARD_PREFIXES))}
    assert not others


def test_every_metric_and_label_of_the_chart_exists(live):
    """The README's table is what every PromQL expression of the dashboard, the alert rules and the
    KEDA queries may name (tests/deploy/test_observability.py); each entry exists on the live server
    with exactly its labels (target labels, added by Prometheus at scrape time, excepted)."""
    served = families(live.metrics())
    for name, (kind, labels) in metric_table().items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in served, f"{name} is not on /metrics"
        served_kind, served_labels = served[family]
        assert served_kind == kind, f"{name}: {served_kind}, the table says {kind}"
        served_labels -= {"le"}
        assert served_labels == labels, f"{name}: labels {set(served_labels)}, the table says {labels}"
        assert not labels & TARGET_LABELS, f"{name}: a target label in the table"


def test_serving_gauge_follows_health(live):
    for service in ("", "circuit.v1.Generation", "circuit.v1.Attribution", "circuit.v1.Features"):
        assert live.metric("circuit_serving", grpc_service=service) == 1.0, service
