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
