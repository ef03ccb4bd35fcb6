"""Health, reflection and metrics: what generic tools see."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from circuit_client import CircuitClient, Sampling


def test_health_serving(server):
    with CircuitClient(server.target) as client:
        assert client.health() == "SERVING"
        assert client.health("circuit.v1.Generation") == "SERVING"


def test_not_serving_until_the_model_is_loaded(server):
    assert server.startup_statuses[-2:] == ["NOT_SERVING", "SERVING"]
    assert server.generate_while_loading == "UNAVAILABLE"


def test_reflection_lists_and_describes_generation(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="circuit.v1.Generation"),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"circuit.v1.Generation", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # a generic client can build stubs


def test_metrics_move_after_calls(server):
    """vLLM's own metrics (recorded by its Prometheus logger) move with a Generate, beside ours."""
    gen = dict(method="circuit.v1.Generation/Generate", code="OK")
    names = [
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_prefill_time_seconds_count",
        "vllm:request_decode_time_seconds_count",
    ]
    before = {n: server.vllm(n) for n in names}
    finished_before = server.vllm("vllm:request_success_total", finished_reason="length")
    rpc_before = server.metric("circuit_rpc_requests_total", **gen)
    rpc_hist_before = server.metric("circuit_rpc_duration_seconds_count", **gen)

    with CircuitClient(server.target) as client:
        client.generate("The capital of France is", Sampling(max_new_tokens=5, temperature=0, ignore_eos=True))

    after = {n: server.vllm(n) for n in names}
    assert after["vllm:prompt_tokens_total"] >= before["vllm:prompt_tokens_total"] + 1
    assert after["vllm:generation_tokens_total"] == before["vllm:generation_tokens_total"] + 5
    assert after["vllm:inter_token_latency_seconds_count"] == before["vllm:inter_token_latency_seconds_count"] + 4
    for name in names[2:]:
        if name != "vllm:inter_token_latency_seconds_count":
            assert after[name] == before[name] + 1, name
    assert server.vllm("vllm:request_success_total", finished_reason="length") == finished_before + 1
    assert server.metric("circuit_rpc_requests_total", **gen) == rpc_before + 1
    assert server.metric("circuit_rpc_duration_seconds_count", **gen) == rpc_hist_before + 1
    text = server.metrics()
    for family in (
        'vllm:num_requests_running{engine="0",model_name="llama"}',
        'vllm:num_requests_waiting{engine="0",model_name="llama"}',
        'vllm:kv_cache_usage_perc{engine="0",model_name="llama"}',
        "circuit_rpc_duration_seconds_bucket",
        'circuit_serving{grpc_service=""} 1.0',
        'circuit_serving{grpc_service="circuit.v1.Generation"} 1.0',
    ):
        assert family in text
    assert "circuit_num_requests_running" not in text and "circuit_generation_tokens" not in text
