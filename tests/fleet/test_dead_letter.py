"""A job whose worker dies on every attempt ends FAILED after --job-max-deliveries deliveries, with
the reason, in the dead-letter stream, and is not handed out again. Workers die through the server's
test-only `--test-exit-on-batch-size` flag: a worker taking a graph of that batch size ends its process
(exit status 86) before computing, as a crashing worker would."""

from __future__ import annotations

import time

from circuit_client.attribution import Accepted, AttributionClient, AttributionSettings
from fleet.conftest import Fleet

DEADLY = AttributionSettings(max_feature_nodes=8, batch_size=7)


def test_a_job_whose_worker_always_dies_is_dead_lettered(demo_model_dir, fleet_redis, tmp_path):
    fleet = Fleet(
        demo_model_dir,
        demo_model_dir / "transcoders",
        fleet_redis.url,
        tmp_path,
        flags=["--test-exit-on-batch-size", "7", "--job-max-deliveries", "2", "--job-reclaim-after", "1"],
    )
    try:
        d1, d2 = fleet.start("d1"), fleet.start("d2")
        with AttributionClient(d1.target, timeout=30) as graphs:
            for event in graphs.stream("the capital of rome is", DEADLY, background=True):
                assert isinstance(event, Accepted)
                key = event.key
                break
        for server in (d1, d2):  # attempt 1 and attempt 2 (reclaimed after 1 s) each kill a replica
            assert server.process.wait(60) == 86
        d3 = fleet.start("d3")  # the next reclaim finds 3 deliveries > 2: dead letter
        with AttributionClient(d3.target, timeout=30) as graphs:
            deadline = time.monotonic() + 30
            while (status := graphs.get_job(key)).state != "failed":
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            assert "dead-lettered" in status.reason and "2 times" in status.reason
            assert status.deliveries == 2
            time.sleep(3)  # past another reclaim period: not retried
            assert graphs.get_job(key).state == "failed"
        assert d3.process.poll() is None
        r = fleet.redis()
        dead = r.xrange(f"{fleet.prefix}jobs:dead")
        assert [fields[b"key"].decode() for _, fields in dead] == [key]
        assert r.xpending(f"{fleet.prefix}jobs:background", "workers")["pending"] == 0
    finally:
        fleet.stop()
