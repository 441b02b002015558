"""N ingest workers lose nothing across a broker restart or crash (Mosquitto, real broker).

Each worker has its own persistent session subscribed to the whole tree and stores its slice; Mosquitto
restores those plain subscriptions from its persistence file, so what a device publishes right after the
restart (before the workers are back) is queued for every worker. The old MQTT 5 shared subscription
loses it there (Mosquitto 2.0 does not restore shared subscriptions): ``test_shared_subscription_loses``
shows it (slow marker).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import IngestHarness, count, wait_for

from line_agent.ingest.chaos import DurableBroker, Expect, JsonPublisher, json_messages, tally
from line_agent.ingest.worker import IngestConfig, slice_of
from line_agent.services import mosquitto_binary

POINTS = 20_000
PER_MESSAGE = 100  # 20 points x 5 metrics


@pytest.fixture
def broker() -> Iterator[DurableBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-slices-"))
    b = DurableBroker(d / "mqtt")
    b.start()
    yield b
    b.stop(signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)


def test_slices_are_deterministic_and_cover_everything() -> None:
    topics = [f"lineguard/s/L{i % 3}/c{i}/telemetry" for i in range(200)] + [
        f"spBv1.0/G/DDATA/n{i}/dev" for i in range(50)]
    for n in (1, 2, 3, 5):
        owners = [[i for i in range(n) if IngestConfig("mqtt://x", "pg", Path("."), worker_index=i,
                                                       worker_count=n).owns(t)] for t in topics]
        assert all(len(o) == 1 for o in owners)  # each message: exactly one worker
    # A cell's kinds and a node's message types stay together (order, Sparkplug host state).
    assert slice_of("p/s/L/c1/telemetry", 4) == slice_of("p/s/L/c1/event", 4) == slice_of("p/s/L/c1/inspection", 4)
    assert len({slice_of(f"spBv1.0/G/{k}/n7", 4) for k in ("NBIRTH", "NDATA", "NDEATH")}
               | {slice_of("spBv1.0/G/DDATA/n7/d", 4)}) == 1
    with pytest.raises(ValueError):
        IngestConfig("mqtt://x", "pg", Path("."), worker_index=2, worker_count=2)


def _run(broker: DurableBroker, db: str, tmp_path: Path, fault: str, share_group: str = "") -> tuple[int, int]:
    h = IngestHarness(broker.url, db, tmp_path / "data")
    try:
        workers = [h.start(i, worker_count=2, share_group=share_group) for i in range(2)]
        msgs = json_messages(h.prefix, "LS", POINTS, PER_MESSAGE, cells=16)
        expect = Expect()
        sent = [expect.of(t, p) for t, p in msgs]
        pub = JsonPublisher(broker.url)
        t0 = time.monotonic()
        for k, (topic, payload) in enumerate(msgs):
            pub.send(topic, payload)
            if k == len(msgs) // 3:
                broker.stop(signal.SIGKILL if fault == "crash" else signal.SIGTERM)
                time.sleep(2.0)
                broker.start()  # same port, same persistence file; the device reconnects in 0.2 s
            time.sleep(max(0.0, t0 + 0.02 * (k + 1) - time.monotonic()))
        pub.close()
        wait_for(lambda: count(db, "SELECT count(*) FROM telemetry WHERE line = 'LS'") >= POINTS,
                 10 if share_group else 30)  # shared: what is lost never comes
        time.sleep(0.5)
        t = tally(db, sent, ["LS"])
        assert t.duplicated == 0
        if not share_group:
            # Both slices did work: each worker stored some and skipped the other's.
            assert all(w.stats.rows > 0 and w.stats.skipped > 0 for w in workers)
        return t.points_stored, t.points_lost
    finally:
        h.stop_all()


@pytest.mark.parametrize("fault", ["restart", "crash"])
def test_two_workers_lose_nothing_across_a_broker_restart(broker: DurableBroker, db: str, tmp_path: Path,
                                                          fault: str) -> None:
    stored, lost = _run(broker, db, tmp_path, fault)
    assert (stored, lost) == (POINTS, 0)
    assert count(db, "SELECT count(*) FROM telemetry WHERE line = 'LS'") == POINTS


@pytest.mark.slow
def test_shared_subscription_loses(broker: DurableBroker, db: str, tmp_path: Path) -> None:
    """The mechanism this replaced: $share/... on Mosquitto loses what arrives before the re-subscription."""
    stored, lost = _run(broker, db, tmp_path, "restart", share_group=f"g{time.monotonic_ns() % 10**6}")
    assert lost > 0 and stored + lost == POINTS
