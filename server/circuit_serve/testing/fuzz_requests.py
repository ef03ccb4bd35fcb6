"""Hypothesis strategies for fuzzing the server: any request message of any RPC, on the wire.

Requests are written at the wire level from each message's descriptor, so every field of every
request message is covered (nested messages, repeated and oneof fields included) with values a
generated stub would refuse to send: negative and huge numbers in unsigned and 32-bit fields, NaN
and infinities, invalid UTF-8 in strings, empty and oversized repeated fields, unknown fields.
Most requests are a valid request with one or two fields overridden by such values (so the checks
behind the first one are reached); others are whole random messages, random bytes, or a message
with garbage appended.

    from circuit_serve.testing.fuzz_requests import RPCS, fuzz_call, send
    @given(fuzz_call())
    def test(call): code, details = send(channel, call)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from circuit_proto.v1 import attribution_pb2, features_pb2, generation_pb2

# Deliberately small input limits for a fuzzed server (tests/hardening, bench/fuzz.py), so that a
# fuzzer reaches each of them cheaply: flag -> value; ModelInfo must report each under its Limits field name
LIMIT_FLAGS = {
    "--max-request-bytes": 65536,
    "--max-prompt-bytes": 2000,
    "--max-stop-strings": 3,
    "--max-stop-chars": 12,
    "--max-attribution-targets": 10,
    "--max-intervention-positions": 6,
    "--max-request-id-bytes": 64,
    "--max-concurrent-rpcs": 64,
    "--executor-threads": 4,
    "--max-executor-queue": 32,
    "--max-new-tokens-limit": 16,
    "--attribution-max-prompt-tokens": 24,
    "--attribution-max-feature-nodes": 64,
    "--attribution-max-batch-size": 64,
    "--attribution-max-queued": 4,
    "--features-max-prompt-tokens": 24,
    "--features-max-top-k": 8,
    "--features-max-listed": 10,
    "--max-steer-new-tokens": 8,
    "--max-interventions": 4,
}


@dataclass(frozen=True)
class Rpc:
    path: str  # "/circuit.v1.Generation/Generate"
    request: Descriptor
    response: type
    streaming: bool


def _rpcs() -> list[Rpc]:
    out = []
    for module in (generation_pb2, attribution_pb2, features_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                response = getattr(module, m.output_type.name, None) or _message_class(m.output_type)
                out.append(Rpc(f"/{service.full_name}/{m.name}", m.input_type, response, m.server_streaming))
    return out


def _message_class(descriptor: Descriptor) -> type:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


RPCS = _rpcs()

# ---------------------------------------------------------------------------- wire encoding

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
T = FieldDescriptor


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as protobuf writes them: 10 bytes, two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, _LEN) + varint(len(payload)) + payload


_INTS = st.one_of(
    st.integers(-3, 300),
    st.sampled_from(
        [
            -(1 << 63),
            -(1 << 31),
            -1,
            (1 << 31) - 1,
            1 << 31,
            (1 << 32) - 1,
            1 << 32,
            (1 << 63) - 1,
            (1 << 64) - 1,
            10**6,
            10**9,
        ]
    ),
    st.integers(-(1 << 63), (1 << 64) - 1),
)
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1e-30, 1e30, -1e30, 0.5, 1.0, 2.0, 2.0001, 1e-45]),
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "hi", "the cat sat on the mat", "Paris is the capital of", "\x00", "\ud7ff\ue000"]),
    st.tuples(st.sampled_from(["a", "é", "猫 ", "the "]), st.integers(0, 20_000)).map(lambda t: t[0] * t[1]),
)
_BYTES = st.one_of(  # invalid UTF-8 and other raw payloads for string fields
    st.binary(max_size=40),
    st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"abc\x80def"]),
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[bytes]:
    """One encoded value (key included) of a non-message field."""
    n = field.number
    t = field.type
    if t in (T.TYPE_FLOAT, T.TYPE_FIXED32, T.TYPE_SFIXED32):
        return _FLOATS.map(lambda v: key(n, _FIXED32) + struct.pack("<f", v))
    if t in (T.TYPE_DOUBLE, T.TYPE_FIXED64, T.TYPE_SFIXED64):
        return st.one_of(st.floats(), st.sampled_from([1e300, -1e300, 0.5])).map(
            lambda v: key(n, _FIXED64) + struct.pack("<d", v)
        )
    if t == T.TYPE_STRING:
        return st.one_of(_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), _BYTES).map(
            lambda b: length_delimited(n, b)
        )
    if t == T.TYPE_BYTES:
        return _BYTES.map(lambda b: length_delimited(n, b))
    if t == T.TYPE_BOOL:
        return st.one_of(st.booleans().map(int), _INTS).map(lambda v: key(n, _VARINT) + varint(v))
    if t == T.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), _INTS).map(lambda v: key(n, _VARINT) + varint(v))
    return _INTS.map(lambda v: key(n, _VARINT) + varint(v))  # int32/64, uint32/64, sint (any varint)


def _packed(field: FieldDescriptor) -> st.SearchStrategy[bytes]:
    """A packed repeated scalar: empty, a few values, or many copies of one (oversized)."""
    if field.type in (T.TYPE_FLOAT, T.TYPE_FIXED32, T.TYPE_SFIXED32):
        one = _FLOATS.map(lambda v: struct.pack("<f", v))
    elif field.type in (T.TYPE_DOUBLE, T.TYPE_FIXED64, T.TYPE_SFIXED64):
        one = st.floats().map(lambda v: struct.pack("<d", v))
    else:
        one = st.one_of(st.integers(0, 400), _INTS).map(varint)
    few = st.lists(one, max_size=8).map(b"".join)
    many = st.tuples(one, st.integers(0, 5000)).map(lambda t: t[0] * t[1])
    return st.one_of(few, many).map(lambda payload: length_delimited(field.number, payload))


_UNKNOWN_FIELD = st.tuples(st.integers(30, 2000), _INTS).map(lambda t: key(t[0], _VARINT) + varint(t[1]))


def message_bytes(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """Any wire encoding of `descriptor`: each field absent, present once, or repeated."""
    parts = []
    for field in descriptor.fields:
        if field.type == T.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value = message_bytes(field.message_type, depth + 1).map(lambda b, n=field.number: length_delimited(n, b))
        else:
            value = _scalar(field)
        if field.is_repeated:
            if field.type not in (T.TYPE_MESSAGE, T.TYPE_STRING, T.TYPE_BYTES) and depth < 3:
                encoded = st.one_of(_packed(field), st.lists(value, max_size=4).map(b"".join))
            else:
                few = st.lists(value, max_size=6).map(b"".join)
                many = st.tuples(value, st.integers(0, 300)).map(lambda t: t[0] * t[1])
                encoded = st.one_of(few, many)
        else:
            encoded = st.one_of(st.just(b""), value, st.lists(value, min_size=2, max_size=3).map(b"".join))
        parts.append(encoded)
    unknown = st.one_of(st.just(b""), _UNKNOWN_FIELD)
    return st.tuples(*parts, unknown).map(b"".join) if parts else unknown


def one_field(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """One field anywhere in `descriptor` (nested ones wrapped in their parents), encoded. Appended
    to a valid message it overrides that field alone (protobuf: the last value of a singular
    field wins; embedded messages merge; repeated fields gain entries)."""
    options = []
    for field in descriptor.fields:
        if field.type == T.TYPE_MESSAGE:
            if depth < 3:
                options.append(
                    one_field(field.message_type, depth + 1).map(lambda b, n=field.number: length_delimited(n, b))
                )
        elif field.is_repeated and field.type not in (T.TYPE_STRING, T.TYPE_BYTES):
            options.append(st.one_of(_packed(field), _scalar(field)))
        else:
            options.append(_scalar(field))
    options.append(_UNKNOWN_FIELD)  # a field number the message does not have (ModelInfoRequest has none)
    return st.one_of(*options)


def _valid_requests() -> dict[str, list[bytes]]:
    """Requests the fuzzing server answers OK, per method name: the bases that `one_field` mutates."""
    g, a, f = generation_pb2, attribution_pb2, features_pb2
    gen = g.GenerateRequest(prompt="the cat sat on the mat", sampling=g.SamplingParams(max_new_tokens=3, temperature=0))
    steer = f.SteerRequest(
        prompt="the cat sat on the mat",
        max_new_tokens=3,
        interventions=[
            f.Intervention(feature=f.FeatureRef(layer=0, index=1), op=f.INTERVENTION_OP_SET, value=2.0, positions=[1])
        ],
    )
    messages = {
        "Generate": [gen, g.GenerateRequest(prompt_token_ids=[1, 20, 30], top_logprobs=2)],
        "GenerateStream": [gen],
        "Tokenize": [g.TokenizeRequest(text="hello world")],
        "ModelInfo": [g.ModelInfoRequest()],
        "Attribute": [
            a.AttributeRequest(
                prompt="the cat sat on the mat",
                output=a.GRAPH_OUTPUT_JSON,
                settings=a.AttributionSettings(max_feature_nodes=16, batch_size=16),
            )
        ],
        "GetGraph": [a.GetGraphRequest(key="0" * 64)],
        "GetGraphStream": [a.GetGraphRequest(key="0" * 64)],
        "GetJob": [a.GetJobRequest(key="0" * 64)],
        "WatchJob": [a.GetJobRequest(key="0" * 64)],
        "CancelJob": [a.GetJobRequest(key="0" * 64)],
        "FeatureActivations": [
            f.FeatureActivationsRequest(prompt="the cat sat", top_k=3),
            f.FeatureActivationsRequest(prompt_token_ids=[20, 30], features=[f.FeatureRef(layer=1, index=2)]),
        ],
        "Steer": [steer],
    }
    return {name: [m.SerializeToString() for m in ms] for name, ms in messages.items()}


VALID = _valid_requests()


@dataclass(frozen=True)
class FuzzCall:
    rpc: Rpc
    payload: bytes
    kind: str  # "valid+field", "message", "message+garbage", "random"


def fuzz_call() -> st.SearchStrategy[FuzzCall]:
    per_rpc = []
    for rpc in RPCS:
        as_message = message_bytes(rpc.request).map(lambda b, r=rpc: FuzzCall(r, b, "message"))
        with_garbage = st.tuples(message_bytes(rpc.request), st.binary(min_size=1, max_size=16)).map(
            lambda t, r=rpc: FuzzCall(r, t[0] + t[1], "message+garbage")
        )
        random = st.binary(max_size=200).map(lambda b, r=rpc: FuzzCall(r, b, "random"))
        bases = VALID[rpc.path.rsplit("/", 1)[1]]
        mutated = st.tuples(st.sampled_from(bases), st.lists(one_field(rpc.request), min_size=1, max_size=2)).map(
            lambda t, r=rpc: FuzzCall(r, t[0] + b"".join(t[1]), "valid+field")
        )
        # 6 in 10 valid+field, 2 message, 1 message+garbage, 1 random (hypothesis would not weight
        # repeated one_of branches)
        mix = [mutated] * 6 + [as_message] * 2 + [with_garbage, random]
        per_rpc.append(st.integers(0, len(mix) - 1).flatmap(lambda k, mix=mix: mix[k]))
    return st.one_of(*per_rpc)


def send(channel: grpc.Channel, call: FuzzCall, *, timeout: float = 60.0) -> tuple[grpc.StatusCode, str]:
    """Send the raw request; (status code, details) when the call ends (a stream is read to its end)."""
    kwargs = dict(request_serializer=lambda b: b, response_deserializer=call.rpc.response.FromString)
    try:
        if call.rpc.streaming:
            for _ in channel.unary_stream(call.rpc.path, **kwargs)(call.payload, timeout=timeout):
                pass
        else:
            channel.unary_unary(call.rpc.path, **kwargs)(call.payload, timeout=timeout)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


# Answers a fuzzed request may get: anything but INTERNAL and UNKNOWN (and the server stays up).
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
