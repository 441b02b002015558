"""A broker crash loses nothing a lineguard publisher sent: post-acknowledgement retention (line_agent/outbox.py).

Mosquitto sends the PUBACK first and writes its persistence file at its next autosave, so a SIGKILL in
between loses messages it has acknowledged. How often a crash hits that gap at random depends on load (the
chaos bench saw 1 message in 1 of 3 crashes at 100,000 points): too rare to show in a test. So the test
makes the gap certain, honestly: the broker's next save is an hour away (``autosave_interval 3600``, no
save on changes), the ingest workers are down while a burst is published and acknowledged (as in the issue's
"a broker crash while ingest is down"), and the broker is SIGKILLed right after the last PUBACK, while the
publisher keeps publishing. Every acknowledged message of the burst is then gone from the broker: with
retention the publisher sends them again after it reconnects and every point is stored once; without
(``ack_retention_s=0``, a device that forgets a message at its PUBACK) exactly the burst is lost.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from ingest_support import IngestHarness, count, wait_for

from line_agent.ingest.chaos import DurableBroker, Expect, json_messages, tally
from line_agent.mqtt import Publisher
from line_agent.services import mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")

POINTS = 6_000
PER_MESSAGE = 100  # 20 points x 5 metrics: 60 messages, 20 per phase


@pytest.mark.parametrize("retention_s", [0.0, 5.0], ids=["no-retention", "retention"])
def test_a_broker_crash_right_after_its_acks_loses_nothing_the_publisher_retains(db: str, tmp_path: Path,
                                                                                  retention_s: float) -> None:
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-crash-"))
    broker = DurableBroker(d / "mqtt", autosave_interval=3600, autosave_on_changes=False)
    broker.start()
    h = IngestHarness(broker.url, db, tmp_path / "data")
    pub: Publisher | None = None
    try:
        for i in range(2):
            h.start(i, worker_count=2)
        # The workers' sessions and subscriptions on disk (as any autosave long before the crash would have).
        broker.stop()
        broker.start()
        for r in h.running:
            assert r.worker.subscribed.wait(20), "worker did not resubscribe after the restart"
        msgs = json_messages(h.prefix, "LC", POINTS, PER_MESSAGE, cells=8)
        sent = [Expect().of(t, p) for t, p in msgs]
        third = len(msgs) // 3
        a, burst, c = msgs[:third], msgs[third:2 * third], msgs[2 * third:]
        pub = Publisher(broker.url, f"dev-crash-{int(retention_s)}", max_queued=0, max_inflight=200,
                        ack_retention_s=retention_s, keepalive=5, reconnect_delay_s=(0.2, 1.0))
        assert pub.wait_connected(10)
        for t, p in a:
            pub.publish(t, p)
        assert pub.flush(20)
        assert wait_for(lambda: count(db, "SELECT count(*) FROM telemetry WHERE line = 'LC'") == len(a) * PER_MESSAGE,
                        30), "phase A not stored"
        h.stop_all()  # ingest down: the burst waits in the broker, in its workers' sessions
        for t, p in burst:
            pub.publish(t, p)
        assert pub.flush(20), "the broker did not acknowledge the burst"
        broker.kill()  # right after the last PUBACK: the broker never saved the burst
        for t, p in c[:5]:  # publishing goes on while the broker is down (outbox) ...
            pub.publish(t, p)
        time.sleep(1.0)
        broker.start()
        for i in range(2):
            h.start(i, worker_count=2)
        for t, p in c[5:]:  # ... and after it is back
            pub.publish(t, p)
        assert pub.flush(30)
        expect_lost = 0 if retention_s else len(burst)
        wait_for(lambda: tally(db, sent, ["LC"]).lost <= expect_lost, 30, 0.5)
        time.sleep(1.0)  # anything late would show now
        t = tally(db, sent, ["LC"])
    finally:
        if pub is not None:
            pub.close(5)
        h.stop_all()
        broker.kill()
        shutil.rmtree(d, ignore_errors=True)
    assert t.duplicated == 0 and t.published == len(msgs)
    if retention_s:
        assert t.lost == 0 and t.points_stored == POINTS, t
        assert pub.outbox.replayed >= len(burst)  # the acknowledged burst went again
    else:  # the control: without retention the crash lost exactly what was acknowledged and not yet saved
        assert t.lost == len(burst) and t.points_lost == len(burst) * PER_MESSAGE, t


def test_ingest_never_acknowledges_a_packet_id_of_a_dropped_connection(db: str, tmp_path: Path) -> None:
    """The ingest side of a broker crash. A worker holds messages it received but has not stored yet; the
    broker crashes without having saved them and comes back with the session as last saved, so it hands out
    the same packet ids again, to new messages. The worker stores the old messages (it still has them) but
    must not acknowledge their ids on the new connection: that would acknowledge the new messages, still
    unstored, and a worker crash right then would lose them (the broker would not send them again)."""
    import uuid

    from ingest_support import Pub

    from line_agent.ingest.worker import IngestWorker

    d = Path(tempfile.mkdtemp(prefix="lineguard-test-stale-"))
    broker = DurableBroker(d / "mqtt", autosave_interval=3600, autosave_on_changes=False)
    broker.start()
    h = IngestHarness(broker.url, db, tmp_path / "data")
    # Two messages per step (batch_rows=1 stops a batch at its second event), so steps can be taken one by one.
    w = IngestWorker(h.config(0, batch_rows=1, batch_delay_s=0.0))
    w.client.connect_async(w._host, w._port, keepalive=5, clean_start=False, properties=w._props)
    w.client.loop_start()
    ids = [f"old-{i}-{uuid.uuid4().hex[:6]}" for i in range(10)], [f"new-{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]
    pub: Pub | None = None
    try:
        assert w.subscribed.wait(15)
        broker.stop()  # the session saved (a save long before the crash)
        broker.start()
        w.subscribed.clear()
        assert wait_for(w.subscribed.is_set, 20)

        def send(batch: list[str]) -> None:
            for eid in batch:
                pub.send(f"{h.prefix}/s/LK/c1/event", f'{{"event_id": "{eid}", "ts": 1790000000, "kind": "x"}}')
            pub.flush(10)

        pub = Pub(broker.url)
        send(ids[0])
        assert wait_for(lambda: w._q.qsize() == 10, 10), "the old messages did not reach the worker"
        pub.close()
        broker.kill()  # never saved: the broker forgets them and the packet ids it gave them
        broker.start()
        assert wait_for(lambda: w.connected.is_set() and w.subscribed.is_set(), 20)
        pub = Pub(broker.url)
        send(ids[1])
        assert wait_for(lambda: w._q.qsize() == 20, 10), "the new messages did not reach the worker"
        for _ in range(5):  # the 10 old messages: stored
            w._step(0.0)
        assert count(db, "SELECT count(*) FROM events WHERE event_id LIKE 'old-%%'") == 10
        assert w._q.qsize() == 10  # the new ones: received, not stored yet
        time.sleep(0.5)  # whatever acks were given are on the wire
        # The worker crashes now: no DISCONNECT, nothing more stored or acknowledged.
        w.client.loop_stop()
        sock = w.client.socket()
        if sock is not None:
            sock.close()
        # Its successor (same client id, same session) gets what the broker still holds unacknowledged.
        h.start(0)
        assert wait_for(lambda: count(db, "SELECT count(*) FROM events WHERE event_id LIKE 'new-%%'") == 10, 20), \
            "new messages were lost: acknowledged with an old connection's packet ids"
        assert w.stats.stale_acks == 10
    finally:
        if pub is not None:
            pub.close()
        h.stop_all()
        broker.kill()
        shutil.rmtree(d, ignore_errors=True)
