"""The monitor's column plan, slot pool and wire format (no vLLM)."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_serve.domain.features import FeatureRef
from circuit_serve.monitoring.columns import ColumnPlan, SlotPool
from circuit_serve.monitoring.wire import ColumnSet, RequestWatchArgs, StepValues, decode_step, encode_blocks

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
        StepValues("a", 0, rng.standard_normal((4, 3)).astype(np.float32), rng.random((4, 3)) > 0.5, None),
        StepValues(
            "b", 9, rng.standard_normal((1, 5)).astype(np.float32), rng.random((1, 5)) > 0.5, (2, 9), ((4, 10),)
        ),
    ]
    header = [[v.rid, v.first_pos, *v.pre.shape, *(v.fired or (-1, -1)), [list(s) for s in v.steered]] for v in steps]
    back = decode_step(encode_blocks(header, [v.pre for v in steps], [v.active for v in steps]))
    for want, got in zip(steps, back, strict=True):
        assert (got.rid, got.first_pos, got.fired, got.steered) == (want.rid, want.first_pos, want.fired, want.steered)
        assert np.array_equal(got.pre, want.pre) and np.array_equal(got.active, want.active)


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
