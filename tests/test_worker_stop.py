"""Check pdauto's worker class: a burst worker stops promptly once the queues
are empty, and a heartbeat costs one round trip to Redis.

With redis-py 8, RQ 3.0's worker could wait up to its 60 s pubsub read
timeout when it stopped; pyproject.toml pins redis below 8 for that reason.
"""

import time

from pdauto import queue
from pdauto.worker import make_worker


def test_burst_worker_stops_promptly(app):
    with app.app_context():
        for event_id in range(3):
            queue.enqueue_dispatch(1_000_000 + event_id)
    durations = []

    for _ in range(5):
        started = time.monotonic()
        make_worker(app).work(burst=True, with_scheduler=False)
        durations.append(time.monotonic() - started)

    # Each round normally takes well under a second; 10 s is far from the 60 s hang.
    assert max(durations) < 10, durations


def test_heartbeat_sends_one_request(app, monkeypatch):
    """The worker's heartbeat reaches Redis in one round trip and still sets its fields."""
    from redis.connection import Connection

    worker = make_worker(app)
    worker.register_birth()
    sent = []
    send_packed_command = Connection.send_packed_command

    def counting_send(self, command, check_health=True):
        sent.append(command)
        return send_packed_command(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting_send)
    worker.heartbeat(timeout=500)
    monkeypatch.undo()

    try:
        assert len(sent) == 1
        assert worker.connection.hget(worker.key, "last_heartbeat")
        assert 400 < worker.connection.ttl(worker.key) <= 500
    finally:
        worker.register_death()
