"""Steering presets through a real server (demo model, transcoders, vLLM's engine core in its own
process, bearer tokens): --steering FILE with two presets, --steering-default `boost`.

- ModelInfo lists both presets with their interventions, and the default;
- plain traffic is steered by the default: a plain request's ids equal a request that skips the
  default and gives the same interventions inline (and differ from the unsteered greedy ids);
- a request by preset name equals the same interventions given inline;
- skipping the default without the `steer` scope is PERMISSION_DENIED; with it, the completion is
  the unsteered greedy one;
- an unknown preset name is INVALID_ARGUMENT naming `steering_preset` and listing the presets.
"""

from __future__ import annotations

import json

import grpc
import pytest

from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import generation_pb2 as gpb
from circuit_proto.v1 import generation_pb2_grpc as gpb_grpc
from circuit_serve.auth.tokens import token_sha256
from tests.features_server.conftest import N_NEW

TOKENS = {
    "gen-only": ("tok-presets-gen-only-4f1c9a7e2b5d8c3f", ["generate"]),
    "steerer": ("tok-presets-steerer-8b2e6d0a4c7f1e9b", ["generate", "steer"]),
}


def presets_for(scenario) -> dict[str, list[dict]]:
    """`boost`: the Steer test's interventions (they change the greedy completion); `other`: a
    scale of the same feature at every prompt position."""
    P = len(scenario.prompt_ids)
    F = scenario.acts.shape[2]
    k = int(scenario.acts[P - 1].reshape(-1).argmax())
    f = {"layer": k // F, "index": k % F}
    return {
        "boost": [
            {**f, "op": "set", "value": 0.0, "positions": [P - 1, P - 2]},
            {**f, "op": "add", "value": 50.0, "generated": True},
        ],
        "other": [{**f, "op": "scale", "value": -3.0, "all_prompt": True}],
    }


def inline(entries: list[dict]) -> list[fpb.Intervention]:
    ops = {"set": fpb.INTERVENTION_OP_SET, "scale": fpb.INTERVENTION_OP_SCALE, "add": fpb.INTERVENTION_OP_ADD}
    return [
        fpb.Intervention(
            feature=fpb.FeatureRef(layer=e["layer"], index=e["index"]),
            op=ops[e["op"]],
            value=e["value"],
            positions=e.get("positions", []),
            generated_tokens=e.get("generated", False),
            all_prompt_positions=e.get("all_prompt", False),
        )
        for e in entries
    ]


@pytest.fixture(scope="module")
def presets_server(launch_server, scenario, tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    presets = root / "presets.json"
    presets.write_text(
        json.dumps({"presets": [{"name": n, "interventions": v} for n, v in presets_for(scenario).items()]})
    )
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps([{"name": n, "sha256": token_sha256(t), "scopes": s} for n, (t, s) in TOKENS.items()]))
    return launch_server(
        "--transcoders",
        str(scenario.transcoders),
        "--steering",
        str(presets),
        "--steering-default",
        "boost",
        "--auth-tokens",
        str(tokens),
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
    )


def test_presets_name_default_and_skip(presets_server, scenario):
    want = presets_for(scenario)

    def call(tenant: str, **fields) -> list[int]:
        req = gpb.GenerateRequest(
            prompt_token_ids=scenario.prompt_ids,
            sampling=gpb.SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True),
            **fields,
        )
        metadata = (("authorization", f"Bearer {TOKENS[tenant][0]}"),)
        return list(stub.Generate(req, timeout=120, metadata=metadata).token_ids)

    with grpc.insecure_channel(presets_server.target) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        metadata = (("authorization", f"Bearer {TOKENS['gen-only'][0]}"),)
        info = stub.ModelInfo(gpb.ModelInfoRequest(), timeout=30, metadata=metadata)
        assert info.steering_default == "boost"
        assert {p.name: list(p.interventions) for p in info.steering_presets} == {
            name: inline(entries) for name, entries in want.items()
        }

        plain = call("gen-only")
        assert plain == call("steerer", skip_default_steering=True, interventions=inline(want["boost"]))
        assert plain != scenario.greedy  # the default steers plain traffic
        assert call("steerer", skip_default_steering=True, steering_preset="other") == call(
            "steerer", skip_default_steering=True, interventions=inline(want["other"])
        )
        assert call("steerer", skip_default_steering=True) == scenario.greedy
        with pytest.raises(grpc.RpcError) as info:
            call("gen-only", skip_default_steering=True)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'steer' scope" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            call("gen-only", steering_preset="quiet")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "steering_preset" in info.value.details() and "boost, other" in info.value.details()
