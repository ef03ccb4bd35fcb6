"""The monitor's column plan, slot pool and wire format (no vLLM)."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_serve.domain.features import FeatureRef
from circuit_serve.monitoring.columns import ColumnPlan, SlotPool
from circuit_serve.monitoring.wire import (
    LENGTH_BYTES,
    ColumnSet,
    RequestWatchArgs,
    StepValues,
    decode_step,
    encode_step,
    message_length,
)

SERVER = (FeatureRef(1, 5), FeatureRef(0, 2), FeatureRef(1, 9))


def test_column_plan_blocks_per_layer():
    plan = ColumnPlan(3, SERVER, request_slots=2)
    # layer 0: [0:2]->(0,2), slots 1..2; layer 1: (1,5), (1,9), slots; layer 2: slots only
    assert [plan.capacity(layer) for layer in range(3)] == [3, 4, 2]
    assert [plan.offset(layer) for layer in range(4)] == [0, 3, 7, 9]
    assert plan.server_columns == (3, 0, 4)
    assert [plan.slot_column(1, s) for s in range(2)] == [5, 6]
    assert [layer for layer in range(3) for _ in range(plan.capacity(layer))] == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert plan.n_columns == 9
    assert ColumnPlan.from_json(plan.to_json()) == plan
    with pytest.raises(IndexError):
        plan.slot_column(0, 2)


def test_slot_pool_shares_a_feature_and_refuses_when_full():
    pool = SlotPool(ColumnPlan(2, SERVER, request_slots=2))
    a = pool.take(FeatureRef(0, 7))
    assert pool.take(FeatureRef(0, 7)) == a  # shared by reference count
    b = pool.take(FeatureRef(0, 8))
    assert a != b and not pool.can_take([FeatureRef(0, 9)])  # no free slot at layer 0
    assert not pool.can_take([FeatureRef(0, 9)]) and pool.can_take([FeatureRef(0, 7), FeatureRef(1, 1)])
    with pytest.raises(LookupError):
        pool.take(FeatureRef(0, 9))
    pool.give_back(FeatureRef(0, 7))
    assert not pool.can_take([FeatureRef(0, 9)])  # still held once
    pool.give_back(FeatureRef(0, 7))
    assert pool.can_take([FeatureRef(0, 9)]) and not pool.can_take([FeatureRef(0, 9), FeatureRef(0, 10)])  # one free
    assert pool.take(FeatureRef(0, 9)) == a  # the column comes back


def test_wire_round_trip():
    args = RequestWatchArgs(
        "r1",
        7,
        [3, 0, 5],
        [1],
        [0.5],
        2,
        True,
        [ColumnSet(5, 1, 7, [0.1, 0.2], 0.3, 0.0)],
        steer=(2,),
        steer_thresholds=(1.5,),
    )
    assert RequestWatchArgs.from_extra(args.to_extra()) == args
    rng = np.random.default_rng(0)
    steps = [
        StepValues(3, 0, rng.standard_normal((4, 3)).astype(np.float32), rng.random((4, 3)) > 0.5, None),
        StepValues(
            11, 9, rng.standard_normal((1, 5)).astype(np.float32), rng.random((1, 5)) > 0.5, (2, 9), ((4, 10), (1, 10))
        ),
        StepValues(5, 2, rng.standard_normal((2, 5)).astype(np.float32), rng.random((2, 5)) > 0.5, None),
    ]
    header = np.asarray([[v.key, v.first_pos, *v.pre.shape, *(v.fired or (-1, -1))] for v in steps])
    switched = [[row, *s] for row, v in enumerate(steps) for s in v.steered]
    # blocks as the logits processor groups them: the last two requests share one block
    pre = [steps[0].pre, np.concatenate([steps[1].pre, steps[2].pre])]
    active = [steps[0].active, np.concatenate([steps[1].active, steps[2].active])]
    message = encode_step(header, switched, pre, active)
    assert message_length(message[:LENGTH_BYTES]) == len(message) - LENGTH_BYTES
    back = decode_step(message[LENGTH_BYTES:])
    for want, got in zip(steps, back, strict=True):
        assert (got.key, got.first_pos, got.fired, got.steered) == (want.key, want.first_pos, want.fired, want.steered)
        assert np.array_equal(got.pre, want.pre) and np.array_equal(got.active, want.active)
    assert decode_step(encode_step(np.zeros((0, 6), np.int64), [], [], [])[LENGTH_BYTES:]) == []


def test_block_store_routes_by_stored_and_pending_blocks():
    from circuit_serve.monitoring.block_store import NAMESPACE, PRIVATE, SHARED, BlockStore

    store = BlockStore(block_size=4, n_columns=2, capacity_bytes=4 * 2 * 5 * 8)  # 8 blocks
    system = [2, 5, 6, 7, 8, 9, 10, 11, 12]  # two full blocks and one token
    first = store.route([*system, 40, 41, 42], private_salt="p1")  # 12 tokens: 2 reusable blocks
    assert first.kind == NAMESPACE and first.salt == store.namespace and len(first.pre) == 0
    assert store.route([*system, 50, 51, 52], private_salt="p2").kind == PRIVATE  # its blocks are pending
    values = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)
    store.put([*system, 40, 41, 42], values, values > 5)
    store.release(first, complete=True)
    assert len(store) == 3
    shared = store.route(system, private_salt="p3")  # both reusable blocks stored: no salt at all
    assert shared.kind == SHARED and shared.salt is None and np.array_equal(shared.pre, values[:8])
    other = store.route([*system, 50, 51, 52, 53], private_salt="p4")  # its third block is new
    assert other.kind == NAMESPACE and np.array_equal(other.active, values[:8] > 5)
    namespace = store.namespace
    store.release(other, complete=False)  # its values never came: vLLM may hold a block without them
    assert store.namespace != namespace
    for i in range(6):  # eviction (oldest quarter) starts a new namespace too
        store.put([100 + i] * 4, values[:4], values[:4] > 5)
    assert len(store) <= 8 and store.renewals == 2


def test_value_channel_routes_steps_from_a_worker_socket_by_key(tmp_path):
    """The server's end of the value channel over a real unix socket: a prefill-sized message (MBs)
    and decode-sized ones arrive whole and in order; a closed request's late values are dropped."""
    import asyncio
    import os
    import socket

    from circuit_serve.monitoring.channel import ValueChannel

    rng = np.random.default_rng(1)
    n_cols = 40
    prefill = rng.standard_normal((8_000, n_cols)).astype(np.float32)  # ~1.6 MB of values

    def step(key: int, first: int, pre: np.ndarray) -> bytes:
        header = np.asarray([[key, first, len(pre), n_cols, -1, -1]])
        return encode_step(header, [], [pre], [pre > 0])

    async def run():
        channel = ValueChannel(tmp_path)
        await channel.start()
        try:
            a, b = channel.open("a", n_cols), channel.open("b", n_cols)
            gone = channel.open("gone", n_cols)
            channel.close("gone")
            worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # as the logits processor writes
            worker.connect(channel.endpoint)
            worker.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(worker, step(a.key, 0, prefill))
            for t in range(5):
                await loop.sock_sendall(worker, step(b.key, t, prefill[t : t + 1]) + step(gone.key, t, prefill[:1]))
            assert await a.wait_for(len(prefill), 10) and await b.wait_for(5, 10)
            worker.close()
            return a, b, gone, channel.endpoint
        finally:
            channel.shutdown()

    a, b, gone, endpoint = asyncio.run(run())
    assert not os.path.exists(endpoint)  # the socket file goes with the server
    assert np.array_equal(a.pre, prefill) and np.array_equal(a.active, prefill > 0)
    assert np.array_equal(b.pre, prefill[:5]) and b.covered == 5
    assert gone.covered == 0
