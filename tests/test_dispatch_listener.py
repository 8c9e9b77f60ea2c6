"""The dispatch listener: a worker thread that a commit wakes in place of an RQ job.

Redis, the database and the webhook receiver are real. The listener runs as a
thread of the test process, as it does in each worker process.
"""

import time

import pytest

from pdauto import crm, queue
from pdauto.extensions import db
from pdauto.models import Attempt, Delivery
from pdauto.worker import DispatchListener
from tests.factories import make_automation


@pytest.fixture
def app_overrides():
    # Small batches, so a burst of changes needs the listener to wake itself again.
    return {"DISPATCH_BATCH_EVENTS": 2}


@pytest.fixture
def listener(app):
    thread = DispatchListener(app)
    thread.start()
    with app.app_context():
        wait_until(lambda: queue.get_redis().exists(queue._listening_key()))
    yield thread
    thread.stop()
    thread.join(timeout=10)


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s: {condition}")


def fresh(query):
    """Return the query's rows as committed now, not as the session's last snapshot."""
    db.session.rollback()
    return db.session.scalars(query).all()


def queued_job_count(app):
    with app.app_context():
        return sum(rq_queue.count for rq_queue in queue.all_queues())


def test_listener_delivers_without_rq_job(app, users, receiver, listener):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        crm.create_record("deal", account_id, {"name": "Acme renewal", "value": 5000})

    assert len(receiver.wait_for_requests(1)) == 1
    assert queued_job_count(app) == 0
    with app.app_context():
        assert not queue.get_redis().exists(queue._dispatch_flag_key())
        wait_until(lambda: len(fresh(db.select(Attempt.id))) == 1)
        [delivery] = fresh(db.select(Delivery))
        assert delivery.state == "succeeded"
        assert delivery.attempt_count == 1


def test_full_batch_wakes_listener_again(app, users, receiver, listener, monkeypatch):
    """One wake dispatches seven events in batches of two: each full batch wakes it again."""
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        monkeypatch.setattr(queue, "enqueue_dispatch", lambda event_id: None)
        for number in range(7):
            crm.create_record("deal", account_id, {"name": f"Deal {number}", "value": 10})
        monkeypatch.undo()
        assert queue.request_dispatch() == 0

    assert len(receiver.wait_for_requests(7)) == 7
    assert queued_job_count(app) == 0
    with app.app_context():
        wait_until(lambda: set(db.session.scalars(db.select(Delivery.state))) == {"succeeded"})
        assert db.session.scalar(db.select(db.func.count(Delivery.id))) == 7


def test_stopped_listener_leaves_commits_to_jobs(app, users, receiver, listener):
    listener.stop()
    listener.join(timeout=5)

    assert not listener.is_alive()
    with app.app_context():
        assert not queue.get_redis().exists(queue._listening_key())
        assert queue.request_dispatch() == 1
    assert queued_job_count(app) == 1
