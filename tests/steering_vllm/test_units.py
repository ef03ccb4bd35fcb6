"""Generate's interventions before vLLM: protobuf conversion, checks and limits (INVALID_ARGUMENT
naming the field), the rows sent to the worker, and the prefix-cache opt-out (no vLLM engine)."""

from __future__ import annotations

import math

import pytest
import torch

from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import generation_pb2 as gpb
from circuit_proto.v1 import monitor_pb2 as mpb
from circuit_serve.domain.errors import InvalidRequest, NotConfigured
from circuit_serve.domain.features import Action, FeatureRef, Intervention, Op, WatchedFeature, WatchRequest
from circuit_serve.domain.generation import GenerationRequest, SamplingOptions
from circuit_serve.monitoring.monitor import EngineMonitor, SteeredRequest
from circuit_serve.monitoring.wire import EXTRA_KEY, STEER_KEY, RequestWatchArgs, SteerArgs
from circuit_serve.rpc.convert_generation import monitor_ask, request_from_pb
from tests.features.tiny import tiny_transcoders

PROMPT = list(range(1, 11))


@pytest.fixture(params=["plt", "clt"])
def monitor(request, tmp_path):
    tcs = tiny_transcoders(request.param)
    server = (WatchedFeature("w", FeatureRef(0, 1), 0.0, Action.RECORD),)
    m = EngineMonitor(
        tcs,
        server,
        model_type="llama",
        request_slots=2,
        max_request_watch=2,
        work_dir=tmp_path,
        max_interventions=3,
        max_intervention_positions=4,
        cache_bytes=1 << 20,
    )
    yield m
    m.shutdown()


def field_of(monitor, ivs) -> str | None:
    with pytest.raises(InvalidRequest) as err:
        monitor.steer_args(ivs, len(PROMPT))
    return err.value.field


def test_generate_request_carries_interventions():
    msg = gpb.GenerateRequest(
        prompt_token_ids=PROMPT,
        interventions=[
            fpb.Intervention(
                feature=fpb.FeatureRef(layer=1, index=3), op=fpb.INTERVENTION_OP_SCALE, value=2.0, positions=[4, 2]
            ),
            fpb.Intervention(
                feature=fpb.FeatureRef(layer=0, index=5), op=fpb.INTERVENTION_OP_SET, value=-1, generated_tokens=True
            ),
        ],
    )
    req = request_from_pb(msg)
    assert req.interventions == (
        Intervention(FeatureRef(1, 3), Op.SCALE, 2.0, (4, 2)),
        Intervention(FeatureRef(0, 5), Op.SET, -1.0, generated=True),
    )
    with pytest.raises(InvalidRequest) as err:
        request_from_pb(gpb.GenerateRequest(prompt_token_ids=PROMPT, interventions=[fpb.Intervention(op=1)]))
    assert err.value.field == "interventions[0].feature"


def test_limits_and_checks_name_the_field(monitor):
    f = FeatureRef(1, 3)
    assert field_of(monitor, [Intervention(f, Op.SET, 1.0, generated=True)] * 4) == "interventions"
    assert field_of(monitor, [Intervention(f, Op.SET, 1.0, positions=(0, 1, 2, 3, 4))]) == "interventions[0].positions"
    assert field_of(monitor, [Intervention(f, Op.ADD, 1.0, positions=(10,))]) == "interventions[0].positions"
    assert field_of(monitor, [Intervention(f, Op.ADD, 1.0)]) == "interventions[0].positions"  # applies nowhere
    assert field_of(monitor, [Intervention(f, Op.ADD, math.nan, generated=True)]) == "interventions[0].value"
    assert field_of(monitor, [Intervention(f, Op.SCALE, -3e38, generated=True)]) == "interventions[0].value"
    with pytest.raises(InvalidRequest, match=r"interventions\[0\]\.feature"):
        monitor.steer_args([Intervention(FeatureRef(9, 0), Op.ADD, 1.0, generated=True)], len(PROMPT))


def test_steer_args_carry_the_features_own_rows(monitor):
    tcs = monitor.transcoders
    ivs = [
        Intervention(FeatureRef(0, 2), Op.SCALE, 0.5, positions=(3, 1, 3)),
        Intervention(FeatureRef(1, 7), Op.SET, 2.0, all_prompt=True, generated=True),
    ]
    args = SteerArgs.from_extra(monitor.steer_args(ivs, len(PROMPT)).to_extra())
    assert args.n_prompt == len(PROMPT) and [e.op for e in args.entries] == ["scale", "set"]
    first, second = args.entries
    assert first.positions == [1, 3] and not first.generated and second.all_prompt and second.generated
    assert torch.equal(torch.tensor(first.row), tcs.W_enc[0][2].float())
    assert first.bias == pytest.approx(float(tcs.b_enc[0][2]))
    for e in args.entries:
        want = tcs.decoder_rows(e.layer, torch.tensor([e.index]))[0].float()  # (n_out, d): L - layer for a CLT
        assert torch.equal(torch.tensor(e.decoder), want)
        assert len(e.decoder) == (tcs.n_layers - e.layer if tcs.is_clt else 1)


def test_decoder_rows_are_read_once_and_kept_within_their_bound(monitor, monkeypatch):
    from circuit_serve.monitoring import monitor as monitor_module

    tcs = monitor.transcoders
    reads: list[int] = []
    real = tcs.decoder_rows
    monkeypatch.setattr(tcs, "decoder_rows", lambda layer, features: reads.append(layer) or real(layer, features))
    iv = [Intervention(FeatureRef(0, 2), Op.ADD, 1.0, generated=True)]
    first = SteerArgs.from_extra(monitor.steer_args(iv, len(PROMPT)).to_extra()).entries[0].decoder
    again = SteerArgs.from_extra(monitor.steer_args(iv, len(PROMPT)).to_extra()).entries[0].decoder
    assert first == again and len(reads) == 1  # the second request reuses the rows read for the first
    one_row = torch.tensor(first).numel() * 4
    monkeypatch.setattr(monitor_module, "STEER_ROWS_CACHE_BYTES", 2 * one_row)  # room for two features' rows
    for index in (3, 4, 5):
        monitor.steer_args([Intervention(FeatureRef(0, index), Op.ADD, 1.0, generated=True)], len(PROMPT))
    assert list(monitor._decoders) == [(0, 4), (0, 5)] and monitor._decoder_bytes == 2 * one_row  # oldest out


def test_steered_requests_opt_out_of_prefix_reuse(monitor):
    monitor.engine_ready(block_size=4, prefix_caching=True)
    ivs = (Intervention(FeatureRef(0, 2), Op.SET, 1.0, generated=True),)
    greedy = SamplingOptions(max_new_tokens=4, temperature=0.0)
    begin = {"prompt_ids": PROMPT, "max_model_len": 64, "sentinel": 0, "decode": lambda ids: ""}

    alone = monitor.begin("r1", GenerationRequest(prompt_token_ids=tuple(PROMPT), interventions=ivs), **begin)
    assert isinstance(alone, SteeredRequest) and alone.cache_salt == "circuit-monitor-r1"
    assert set(alone.sampling_overrides(False)["extra_args"]) == {STEER_KEY}

    watch = WatchRequest(monitor.watched, n_server=1)
    both = monitor.begin(
        "r2",
        GenerationRequest(prompt_token_ids=tuple(PROMPT), sampling=greedy, watch=watch, interventions=ivs),
        **begin,
    )
    assert both.cache_salt == "circuit-monitor-r2" and not both.reuses_cache  # private: no shared blocks
    assert set(both.sampling_overrides(False)["extra_args"]) == {EXTRA_KEY, STEER_KEY}
    both.close()

    plain = monitor.begin(
        "r3", GenerationRequest(prompt_token_ids=tuple(PROMPT), sampling=greedy, watch=watch), **begin
    )
    assert plain.reuses_cache  # an unsteered monitored request still shares the monitored namespace
    plain.close()
    assert monitor.begin("r4", GenerationRequest(prompt_token_ids=tuple(PROMPT)), **begin) is None


def test_steering_is_refused_where_vllm_compiles_the_layers(monitor):
    ivs = [Intervention(FeatureRef(0, 2), Op.SET, 1.0, generated=True)]
    monitor.engine_args({}, enforce_eager=True)
    assert monitor.steer_args(ivs, len(PROMPT)).entries
    monitor.engine_args({}, enforce_eager=False)
    with pytest.raises(NotConfigured, match="--enforce-eager"):
        monitor.steer_args(ivs, len(PROMPT))


def test_client_interventions_reach_the_server_request():
    from circuit_client import _convert
    from circuit_client.features import Intervention as ClientIntervention
    from circuit_client.types import Sampling

    ivs = [ClientIntervention.parse("1:3:scale:2@4,2"), ClientIntervention.parse("0:5:set:-1@gen")]
    msg = _convert.generate_request(None, PROMPT, Sampling(), False, None, ivs)
    assert request_from_pb(msg).interventions == (
        Intervention(FeatureRef(1, 3), Op.SCALE, 2.0, (4, 2)),
        Intervention(FeatureRef(0, 5), Op.SET, -1.0, generated=True),
    )


# ---- steer rules (conditional steering) ---------------------------------------------------------


def begin_with(monitor, rules, ivs=()):
    watch = WatchRequest((*monitor.watched, *rules), n_server=len(monitor.watched))
    request = GenerationRequest(
        prompt_token_ids=tuple(PROMPT), sampling=SamplingOptions(max_new_tokens=4), watch=watch, interventions=ivs
    )
    return monitor.begin("r", request, prompt_ids=PROMPT, max_model_len=64, sentinel=0, decode=lambda ids: "")


def test_watch_rules_carry_steer_interventions():
    iv = fpb.Intervention(feature=fpb.FeatureRef(layer=1, index=3), op=fpb.INTERVENTION_OP_ADD, value=2.0)
    iv.generated_tokens = True
    msg = gpb.GenerateRequest(
        prompt_token_ids=PROMPT,
        watch=[mpb.WatchRule(name="t", layer=0, index=2, threshold=0.5, action="steer", steer=[iv])],
    )
    (rule,) = monitor_ask(msg).rules
    assert rule.action is Action.STEER
    assert rule.steer == (Intervention(FeatureRef(1, 3), Op.ADD, 2.0, generated=True),)
    bad = gpb.GenerateRequest(watch=[mpb.WatchRule(name="t", action="steer", steer=[fpb.Intervention(op=9)])])
    with pytest.raises(InvalidRequest) as err:
        monitor_ask(bad)
    assert err.value.field == "watch[0].steer[0].op"


def test_steer_rules_are_checked_naming_the_field(monitor):
    f, g = FeatureRef(0, 2), FeatureRef(1, 3)
    iv = Intervention(g, Op.SET, 1.0, generated=True)

    def field(rules, ivs=()):
        with pytest.raises(InvalidRequest) as err:
            begin_with(monitor, rules, ivs)
        return err.value.field

    assert field([WatchedFeature("t", f, 0.5, Action.STEER)]) == "watch[0].steer"  # nothing to apply
    assert field([WatchedFeature("t", f, 0.5, Action.FLAG, steer=(iv,))]) == "watch[0].steer"  # not a steer rule
    far = Intervention(g, Op.SET, 1.0, positions=(10,))
    assert field(
        [WatchedFeature("t", f, 0.5, Action.RECORD), WatchedFeature("u", f, 0.5, Action.STEER, steer=(far,))]
    ) == ("watch[1].steer[0].positions")
    nowhere = Intervention(g, Op.SET, 1.0)
    assert field([WatchedFeature("t", f, 0.5, Action.STEER, steer=(nowhere,))]) == "watch[0].steer[0].positions"
    # the limit (3 here) counts the request's own interventions and its rules'
    assert field([WatchedFeature("t", f, 0.5, Action.STEER, steer=(iv, iv))], ivs=(iv, iv)) == "watch[0].steer"


def test_steer_rule_interventions_wait_for_their_rule(monitor):
    monitor.engine_ready(block_size=4, prefix_caching=True)
    f, g = FeatureRef(0, 2), FeatureRef(1, 3)
    always = Intervention(f, Op.SCALE, 0.0, all_prompt=True)
    when = Intervention(g, Op.ADD, 1.0, generated=True)
    rules = [WatchedFeature("t", f, 0.5, Action.RECORD), WatchedFeature("u", g, 0.25, Action.STEER, steer=(when,))]
    watched = begin_with(monitor, rules, ivs=(always,))
    try:
        extra = watched.sampling_overrides(False)["extra_args"]
        args = RequestWatchArgs.from_extra(extra[EXTRA_KEY])
        assert args.steer == (2,) and args.steer_thresholds == (0.25,)  # the server's column, then t, then u
        entries = SteerArgs.from_extra(extra[STEER_KEY]).entries
        assert [(e.layer, e.index, e.rule) for e in entries] == [(0, 2, -1), (1, 3, 2)]
        assert not watched.reuses_cache  # steer rules opt out of prefix reuse as steered requests do
    finally:
        watched.close()


def test_a_watchlist_file_cannot_steer(tmp_path):
    from circuit_serve.features.files import FeatureFileError
    from circuit_serve.features.watchlist import read_watchlist

    path = tmp_path / "watch.yaml"
    path.write_text("watchlist:\n- {name: a, layer: 0, index: 1, threshold: 0.5, action: steer}\n")
    with pytest.raises(FeatureFileError, match="action"):
        read_watchlist(path)


def test_client_steer_rules_presets_and_reports_convert():
    from circuit_client import _convert
    from circuit_client import monitor as client_monitor
    from circuit_client.features import Intervention as ClientIntervention
    from circuit_client.types import Sampling
    from circuit_serve.domain.features import FeatureReport, MonitorReport
    from circuit_serve.rpc.convert_features import monitor_report_to_pb
    from circuit_serve.rpc.convert_generation import presets_to_pb

    rule = client_monitor.WatchRule(
        "t", 0, 2, 0.5, "steer", steer=(ClientIntervention.parse("1:3:add:2@gen"),), steer_preset="calm"
    )
    msg = _convert.generate_request(
        None,
        PROMPT,
        Sampling(),
        client_monitor.Monitoring(rules=(rule,)),
        None,
        (),
        "loud",
        True,
    )
    req = request_from_pb(msg)
    assert (req.steering_preset, req.skip_default_steering) == ("loud", True)
    (got,) = monitor_ask(msg).rules
    assert (got.action, got.steer_preset) == (Action.STEER, "calm")
    assert got.steer == (Intervention(FeatureRef(1, 3), Op.ADD, 2.0, generated=True),)

    watched = WatchedFeature("t", FeatureRef(0, 2), 0.5, Action.STEER, steer=got.steer)
    report = MonitorReport((FeatureReport(watched, 1.0, (), (3,), steered_from=14),))
    back = client_monitor.from_pb(monitor_report_to_pb(report))
    assert back.features[0].steered_from == 14 and not back.flagged
    assert "steered from position 14" in back.summary()
    unfired = FeatureReport(watched, 0.0, (), ())
    assert client_monitor.from_pb(monitor_report_to_pb(MonitorReport((unfired,)))).features[0].steered_from is None

    from circuit_serve.features.presets import SteeringPresets

    info = gpb.ModelInfoResponse(model_name="m")
    ivs = (Intervention(FeatureRef(1, 3), Op.SCALE, 0.5, positions=(1, 2)),)
    presets_to_pb(SteeringPresets({"calm": ivs}, default="calm"), info)
    client_info = _convert.model_info(info)
    assert client_info.steering_default == "calm"
    assert client_info.steering_presets == {"calm": (ClientIntervention(1, 3, "scale", 0.5, (1, 2)),)}
