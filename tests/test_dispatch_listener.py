"""The dispatch listener: a worker thread that a commit wakes in place of an RQ job.

Redis, the database and the webhook receiver are real. The listener runs as a
thread of the test process, as it does in each worker process.
"""

import signal
import time

import pytest
from rq.exceptions import StopRequested
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from pdauto import crm, deliveries, queue
from pdauto.extensions import db
from pdauto.models import Attempt, Delivery, Event, utcnow
from pdauto.worker import DispatchListener, make_worker
from tests.conftest import run_jobs
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


def test_stopping_listener_hands_over_to_job(app, users, receiver, listener):
    """A listener that stops queues a dispatch job, and later commits queue jobs again."""
    listener.stop()
    listener.join(timeout=5)

    assert not listener.is_alive()
    assert queued_job_count(app) == 1
    with app.app_context():
        redis_client = queue.get_redis()
        assert not redis_client.exists(queue._listening_key())
        redis_client.delete(queue._dispatch_flag_key())
        assert queue.request_dispatch() == 1
    assert queued_job_count(app) == 2


def test_woken_after_stop_leaves_batch_to_job(app, users, receiver, listener):
    """A wake that arrives once stop() was called is handed to a dispatch job, not sent."""
    account_id = users["manager"][2]
    listener.stop()
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        crm.create_record("deal", account_id, {"name": "Late deal", "value": 1})
    listener.join(timeout=5)

    assert not listener.is_alive()
    assert receiver.requests == []
    assert queued_job_count(app) >= 1
    run_jobs(app)
    assert len(receiver.wait_for_requests(1)) == 1


def test_concurrent_claim_takes_next_events(app, users, monkeypatch):
    """On PostgreSQL a claim skips the events that another, uncommitted claim holds."""
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("SQLite runs one write transaction at a time")
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, "https://hooks.example.test/in")
        monkeypatch.setattr(queue, "enqueue_dispatch", lambda event_id: None)
        for number in range(4):
            crm.create_record("deal", account_id, {"name": f"Deal {number}", "value": 10})
        event_ids = sorted(db.session.scalars(db.select(Event.id)))

        with Session(db.engine) as other:
            oldest = db.select(Event.id).order_by(Event.id).limit(2).with_for_update()
            other.execute(
                update(Event)
                .where(Event.id.in_(oldest.scalar_subquery()))
                .values(dispatched_at=utcnow())
            )
            # Without SKIP LOCKED the claim below would wait for this transaction.
            db.session.execute(text("SET lock_timeout = '2s'"))
            firsts, claimed = deliveries.claim_waiting(2)
            other.rollback()

    assert claimed == 2
    assert len(firsts) == 2
    with app.app_context():
        dispatched = db.session.scalars(
            db.select(Event.id).where(Event.dispatched_at.is_not(None)).order_by(Event.id)
        )
        assert list(dispatched) == event_ids[2:]


def test_worker_stop_request_stops_listener(app, listener):
    worker = make_worker(app)
    worker.listener = listener
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        # An idle RQ worker leaves its loop by raising StopRequested.
        with pytest.raises(StopRequested):
            worker.request_stop(signal.SIGTERM, None)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)

    listener.join(timeout=5)
    assert not listener.is_alive()
