"""Check that a burst worker stops promptly once the queues are empty.

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
