"""Steering presets (--steering FILE): the file's forms and errors (file, preset, field; YAML
line), the default's flag checks, and how a request's presets expand (no engine)."""

from __future__ import annotations

import pytest

from circuit_serve.auth.principal import Principal, Scope
from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.option import OptionError
from circuit_serve.domain.errors import InvalidRequest, PermissionDenied
from circuit_serve.domain.features import (
    Action,
    FeatureRef,
    Intervention,
    Op,
    TranscoderShape,
    WatchedFeature,
    WatchRequest,
)
from circuit_serve.domain.generation import GenerationRequest
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.presets import SteeringPresets, check_presets, read_presets

SHAPE = TranscoderShape(n_layers=4, d_transcoder=100)
GOOD = """presets:
- name: calm
  interventions:
  - {layer: 3, index: 17, op: set, value: 0, generated: true}
  - {layer: 1, index: 5, op: SCALE, value: 0.5, positions: [1, 2]}
- name: loud
  interventions:
  - {layer: 0, index: 9, op: add, value: 4, all_prompt: true}
"""
CALM = (
    Intervention(FeatureRef(3, 17), Op.SET, 0.0, generated=True),
    Intervention(FeatureRef(1, 5), Op.SCALE, 0.5, positions=(1, 2)),
)
LOUD = (Intervention(FeatureRef(0, 9), Op.ADD, 4.0, all_prompt=True),)
GEN_ONLY = Principal("acme", frozenset({Scope.GENERATE}))
STEERER = Principal("ops", frozenset({Scope.GENERATE, Scope.STEER}))


def write(tmp_path, text, name="presets.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_presets_file_reads_each_preset(tmp_path):
    presets = read_presets(write(tmp_path, GOOD))
    assert presets == {"calm": CALM, "loud": LOUD}
    check_presets(presets, tmp_path / "presets.yaml", SHAPE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: boost, value: 1, generated: true}]}",
            r"entry 0 \('a'\): interventions\[0\]: field 'op': is 'boost'; must be one of set, scale, add",
        ),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: .nan, generated: true}]}",
            r"interventions\[0\]: field 'value': must be a finite number",
        ),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: add, value: 3.0e+38, generated: true}]}",
            r"interventions\[0\]: field 'value': is 3e\+38; must be within \+-10000",
        ),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: 1}]}",
            r"interventions\[0\]: field 'positions': the intervention applies nowhere",
        ),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: 1, generated: yes please}]}",
            r"field 'generated': must be true or false",
        ),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: 1, positions: [-1]}]}",
            r"field 'positions': must be a list of non-negative integers",
        ),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: 1, where: gen}]}",
            r"field 'where': unknown field",
        ),
        ("- {name: a, interventions: []}", r"entry 0 \('a'\): field 'interventions': must be a non-empty list"),
        (
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: 1, generated: true}]}\n"
            "- {name: a, interventions: [{layer: 1, index: 2, op: set, value: 1, generated: true}]}",
            r"entry 1 \('a'\): field 'name': 'a' is used by an earlier preset",
        ),
        ("[]", "no presets"),
        ("presets:\n- {name: a,\n  interventions: [\n", r"not valid YAML(.|\n)*line 4"),
    ],
)
def test_presets_file_errors_name_file_preset_and_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(FeatureFileError, match=message) as info:
        read_presets(path)
    assert str(path) in str(info.value)


def test_preset_features_are_checked_against_the_transcoders(tmp_path):
    path = write(tmp_path, "- {name: far, interventions: [{layer: 4, index: 2, op: set, value: 1, generated: true}]}")
    with pytest.raises(FeatureFileError, match=r"preset 'far': interventions\[0\]: layer 4 does not exist"):
        check_presets(read_presets(path), path, SHAPE)


def test_default_needs_the_presets_file(tmp_path):
    with pytest.raises(OptionError, match="--steering-default needs --steering"):
        FeaturesConfig(steering_default="calm").check()
    from circuit_serve.features.service import _read_presets

    path = write(tmp_path, GOOD)
    with pytest.raises(FeatureFileError, match=r"--steering-default 'quiet' is not a preset of .*: calm, loud"):
        _read_presets(FeaturesConfig(steering=path, steering_default="quiet"))
    assert _read_presets(FeaturesConfig(steering=path, steering_default="loud")).default == "loud"


def test_requests_expand_presets_in_order():
    own = Intervention(FeatureRef(2, 2), Op.ADD, 1.0, generated=True)
    presets = SteeringPresets({"calm": CALM, "loud": LOUD}, default="loud")
    plain = presets.apply(GenerationRequest(prompt="x"), GEN_ONLY)
    assert plain.interventions == LOUD  # the default steers plain traffic
    named = presets.apply(GenerationRequest(prompt="x", steering_preset="calm", interventions=(own,)), GEN_ONLY)
    assert named.interventions == (*LOUD, *CALM, own)
    skipped = presets.apply(GenerationRequest(prompt="x", skip_default_steering=True), STEERER)
    assert skipped.interventions == ()
    with pytest.raises(PermissionDenied, match="'steer' scope"):
        presets.apply(GenerationRequest(prompt="x", skip_default_steering=True), GEN_ONLY)
    with pytest.raises(
        InvalidRequest, match="unknown steering preset 'quiet'; this server's presets: calm, loud"
    ) as err:
        presets.apply(GenerationRequest(prompt="x", steering_preset="quiet"), GEN_ONLY)
    assert err.value.field == "steering_preset"
    with pytest.raises(InvalidRequest, match="started without --steering"):
        SteeringPresets().apply(GenerationRequest(prompt="x", steering_preset="calm"), GEN_ONLY)


def test_steer_rules_take_a_preset():
    own = Intervention(FeatureRef(2, 2), Op.ADD, 1.0, generated=True)
    server = WatchedFeature("w", FeatureRef(0, 1), 0.5, Action.RECORD)
    rule = WatchedFeature("t", FeatureRef(1, 1), 0.5, Action.STEER, steer=(own,), steer_preset="calm")
    watch = WatchRequest((server, rule), n_server=1)
    out = SteeringPresets({"calm": CALM}).apply(GenerationRequest(prompt="x", watch=watch), GEN_ONLY)
    assert out.watch.features[1].steer == (*CALM, own) and out.watch.features[0] == server
    bad = WatchRequest((server, WatchedFeature("t", FeatureRef(1, 1), 0.5, Action.STEER, steer_preset="quiet")), 1)
    with pytest.raises(InvalidRequest) as err:
        SteeringPresets({"calm": CALM}).apply(GenerationRequest(prompt="x", watch=bad), GEN_ONLY)
    assert err.value.field == "watch[0].steer_preset"
