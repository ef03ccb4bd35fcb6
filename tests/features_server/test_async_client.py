"""The asyncio features client against the real server: activations, steering, monitoring beside it, errors.

Each call is checked against what the blocking client (or the scenario) says for the same input:
the two clients come from one description, so they must agree to the bit.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from circuit_client import (
    AsyncCircuitClient,
    AsyncFeaturesClient,
    CircuitRpcError,
    FeaturesClient,
    FinishReason,
    Monitoring,
    Sampling,
    WatchRule,
)
from circuit_client.features import Intervention
from tests.features_server.conftest import N_NEW, STOP_AT, label_of


def run(main):
    return asyncio.run(main())


def test_activations_equal_the_blocking_clients(features_server, scenario):
    marker = scenario.watched["marker"]
    feature = (marker["layer"], marker["index"])

    async def main():
        async with AsyncFeaturesClient(features_server.target) as features:
            listed = await features.activations(prompt_token_ids=scenario.prompt_ids, features=[feature, (0, 1)])
            top = await features.activations("the sea", top_k=3)
        return listed, top

    listed, top = run(main)
    with FeaturesClient(features_server.target) as features:
        assert listed == features.activations(prompt_token_ids=scenario.prompt_ids, features=[feature, (0, 1)])
        assert top == features.activations("the sea", top_k=3)
    assert [p.token_id for p in listed[-len(scenario.prompt_ids) :]] == scenario.prompt_ids
    shift = len(listed) - len(scenario.prompt_ids)  # BOS the engine prepends, if any
    for p in listed[shift:]:
        assert [(v.layer, v.index) for v in p.values] == [feature, (0, 1)]
        assert p.values[0].label == "marker label" and p.values[1].label == label_of(0, 1)
        want = float(scenario.acts[p.position - shift, feature[0], feature[1]])
        assert p.values[0].activation == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert all(0 < len(p.values) <= 3 for p in top[1:])


def test_steering_to_the_current_value_changes_nothing(features_server, scenario):
    P = len(scenario.prompt_ids)
    acts = scenario.acts[:P]  # (P, L, F)
    F = acts.shape[2]
    pos = P - 1
    k = int(acts[pos].reshape(-1).argmax())
    value = float(acts[pos].reshape(-1)[k])
    same = Intervention(k // F, k % F, "set", value, positions=(pos,))
    pushed = Intervention(k // F, k % F, "add", 1000.0, positions=(pos,), generated_tokens=True)

    async def main():
        async with AsyncFeaturesClient(features_server.target, timeout=120) as features:
            return await asyncio.gather(
                features.steer(
                    None, [same], prompt_token_ids=scenario.prompt_ids, max_new_tokens=8, include_default=True
                ),
                features.steer(None, [pushed], prompt_token_ids=scenario.prompt_ids, max_new_tokens=8),
            )

    kept, changed = run(main)
    assert kept.prompt_token_ids[-P:] == tuple(scenario.prompt_ids)
    assert list(kept.steered.token_ids) == list(kept.default.token_ids) == scenario.greedy[:8]
    assert list(changed.steered.token_ids) != scenario.greedy[:8] and changed.default is None
    with FeaturesClient(features_server.target, timeout=120) as features:
        assert changed == features.steer(None, [pushed], prompt_token_ids=scenario.prompt_ids, max_new_tokens=8)


def test_monitoring_beside_features_on_one_shared_channel(features_server, scenario):
    P = len(scenario.prompt_ids)
    F = scenario.acts.shape[2]
    window = scenario.acts[P : P + STOP_AT + 1].reshape(STOP_AT + 1, -1)  # (STOP_AT + 1, L*F) completion to the stop
    watched = {(e["layer"], e["index"]) for e in scenario.watched.values()}
    k = next(k for k in window.max(0).values.argsort(descending=True).tolist() if (k // F, k % F) not in watched)
    own = WatchRule("own", k // F, k % F, float(window[:, k].max()) / 2, "flag")
    sampling = Sampling(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True)

    async def main():
        async with AsyncCircuitClient(features_server.target) as client:
            features = AsyncFeaturesClient(client)  # shares the channel; closing the client closes it
            assert features.channel is client.channel
            result = await client.generate(prompt_token_ids=scenario.prompt_ids, sampling=sampling, monitor=True)
            chunks = [
                c
                async for c in client.stream(
                    prompt_token_ids=scenario.prompt_ids,
                    sampling=sampling,
                    monitor=Monitoring(rules=(own,), values=True),
                )
            ]
            rows = await features.activations(prompt_token_ids=scenario.prompt_ids, top_k=1)
        return result, chunks, rows

    result, chunks, rows = run(main)
    assert list(result.token_ids) == scenario.greedy[: STOP_AT + 1]
    assert result.finish_reason == FinishReason.FEATURE_RULE and result.monitor.stopped_by == "stopper"
    end = chunks[-1]
    assert [t for c in chunks for t in c.token_ids] == scenario.greedy[: STOP_AT + 1]
    assert end.finish_reason == FinishReason.FEATURE_RULE and end.monitor.stopped_by == "stopper"
    report = {f.name: f for f in end.monitor.features}
    assert len(report) == len(scenario.watched) + 1 and report["own"].fired and end.monitor.flagged
    assert list(report["own"].completion_positions) == (window[:, k] > own.threshold).nonzero().flatten().tolist()
    assert list(report["marker"].completion_positions) == scenario.expected_positions["marker"]
    assert [v.position for c in chunks for v in c.activations] == list(range(P + STOP_AT + 1))
    assert rows and rows[-1].token_id == scenario.prompt_ids[-1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("activations-layer", "layer 99 does not exist"),
        ("activations-index", "index 100000 does not exist"),
        ("steer-position", "is beyond the prompt"),
    ],
)
def test_bad_input_is_a_circuit_rpc_error_and_the_server_keeps_serving(features_server, scenario, call, message):
    async def main():
        async with AsyncFeaturesClient(features_server.target, timeout=30) as features:
            with pytest.raises(CircuitRpcError) as info:
                if call == "activations-layer":
                    await features.activations("the sea", features=[(99, 0)])
                elif call == "activations-index":
                    await features.activations("the sea", features=[(0, 100000)])
                else:
                    await features.steer(
                        None,
                        [Intervention(0, 0, "set", 0.0, positions=(len(scenario.prompt_ids),))],
                        prompt_token_ids=scenario.prompt_ids,
                    )
            after = await features.activations("the sea", features=[(0, 1)])
        return info.value, after

    err, after = run(main)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and message in err.details
    assert after and [(v.layer, v.index) for v in after[-1].values] == [(0, 1)]


def test_a_deadline_surfaces_as_deadline_exceeded(features_server, scenario):
    async def main():
        async with AsyncFeaturesClient(features_server.target, timeout=120) as features:
            with pytest.raises(CircuitRpcError) as info:
                await features.steer(
                    None,
                    [Intervention(0, 0, "add", 0.0, generated_tokens=True)],
                    prompt_token_ids=scenario.prompt_ids,
                    max_new_tokens=N_NEW,
                    timeout=0.001,
                )
        return info.value

    assert run(main).code == grpc.StatusCode.DEADLINE_EXCEEDED
