"""The dispatch job sends first attempts itself, writing successes in groups.

Every attempt must still be recorded, failures must take the retry path, and a
slow receiver must not keep the other deliveries of an event waiting past the
job's time budget.
"""

import collections
from datetime import timedelta

import pytest
from sqlalchemy import update

from pdauto import crm, deliveries, events, jobs, queue
from pdauto.extensions import db
from pdauto.models import Attempt, Automation, Delivery, Event, utcnow
from tests.conftest import run_jobs
from tests.factories import make_automation


def deal_event(account_id):
    crm.create_record("deal", account_id, {"name": "Acme renewal", "value": 5000})
    return db.session.scalar(db.select(Event.id).order_by(Event.id.desc()))


def queued_job_count(app):
    with app.app_context():
        return sum(rq_queue.count for rq_queue in queue.all_queues())


def test_dispatch_sends_fanout_itself(app, users, receiver):
    account_id = users["manager"][2]
    count = 2 * deliveries.SUCCESS_GROUP_SIZE + 7
    with app.app_context():
        for number in range(count):
            make_automation(account_id, receiver.url(f"/hook/{number}"), name=f"Hook {number}")
        event_id = deal_event(account_id)
        # The change queued its dispatch job; run it here, not through the worker.
        queue.get_redis().flushdb()
        assert jobs.dispatch_event(event_id) == count

    assert queued_job_count(app) == 0
    paths = collections.Counter(request.path for request in receiver.requests)
    assert paths == {f"/hook/{number}": 1 for number in range(count)}
    with app.app_context():
        rows = db.session.scalars(db.select(Delivery)).all()
        assert {(row.state, row.attempt_count, row.last_status) for row in rows} == {
            ("succeeded", 1, 200)
        }
        assert all(row.lease_expires_at is None and row.completed_at for row in rows)
        attempts = db.session.scalars(db.select(Attempt)).all()
        assert len(attempts) == count
        for attempt in attempts:
            assert attempt.succeeded
            assert attempt.number == 1
            assert attempt.outcome == "success"
            assert attempt.response_status == 200
            assert attempt.response_body == "ok"
            assert attempt.request_headers["webhook-id"] == attempt.delivery_id
            assert '"event_model":"deal"' in attempt.request_body


def test_failures_take_the_retry_path_between_successes(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    receiver.respond("/bad", status=503, headers={"Retry-After": "120"})
    with app.app_context():
        good = make_automation(account_id, receiver.url("/good"), name="Good")
        make_automation(account_id, receiver.url("/bad"), name="Bad")
        make_automation(account_id, receiver.url("/good2"), name="Good 2")
        # A success clears an earlier run of failures, in bulk as one by one.
        good.failing_since = utcnow() - timedelta(hours=1)
        good.pause_warning_sent_at = utcnow()
        db.session.commit()
        deal_event(account_id)

    run_jobs(app)

    with app.app_context():
        states = {
            row.automation.name: (row.state, row.attempt_count)
            for row in db.session.scalars(db.select(Delivery))
        }
        assert states == {
            "Good": ("succeeded", 1),
            "Bad": ("pending", 1),
            "Good 2": ("succeeded", 1),
        }
        bad = db.session.scalar(
            db.select(Delivery).join(Automation).where(Automation.name == "Bad")
        )
        assert bad.next_attempt_at >= utcnow() + timedelta(seconds=100)
        good = db.session.scalar(db.select(Automation).where(Automation.name == "Good"))
        assert good.failing_since is None
        assert good.pause_warning_sent_at is None
    [email] = smtp_server.wait_for(1)
    assert "Bad" in email.subject


@pytest.mark.parametrize("app_overrides", [{"DISPATCH_SEND_BUDGET_SECONDS": 0.5}])
def test_slow_receiver_releases_the_rest(app, users, receiver):
    account_id = users["manager"][2]
    receiver.respond("/slow", delay=0.4)
    with app.app_context():
        for number in range(6):
            make_automation(account_id, receiver.url("/slow"), name=f"Slow {number}")
        event_id = deal_event(account_id)
        queue.get_redis().flushdb()
        jobs.dispatch_event(event_id)

        sent_by_dispatch = len(receiver.requests)
        assert 1 <= sent_by_dispatch < 6
        states = collections.Counter(db.session.scalars(db.select(Delivery.state)))
        assert states == {"succeeded": sent_by_dispatch, "pending": 6 - sent_by_dispatch}
    # Each delivery left over has a job of its own.
    assert queued_job_count(app) == 6 - sent_by_dispatch

    run_jobs(app)

    assert len(receiver.requests) == 6
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 6
    with app.app_context():
        assert set(db.session.scalars(db.select(Delivery.state))) == {"succeeded"}


def test_dead_dispatch_left_to_sweep(app, users, receiver):
    """Deliveries the dispatch job claimed stay under their lease until it runs out."""
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        event_id = deal_event(account_id)
        # The job claims the deliveries, then dies before sending anything.
        [delivery_id] = deliveries.dispatch_event(event_id, claim=True)
        assert db.session.get(Delivery, delivery_id).state == "sending"
        assert deliveries.sweep()["deliveries"] == 0

        db.session.execute(
            update(Delivery).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        assert deliveries.sweep()["leases_expired"] == 1

    run_jobs(app)

    [request] = receiver.wait_for_requests(1)
    assert request.headers["webhook-id"] == delivery_id
    with app.app_context():
        assert db.session.get(Delivery, delivery_id).state == "succeeded"


def test_burst_of_changes_uses_few_jobs(app, users, receiver):
    account_id = users["manager"][2]
    event_count = 250
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        for _ in range(event_count):
            deal_event(account_id)

    # Every commit found the job of the first one still queued.
    assert queued_job_count(app) == 1

    run_jobs(app, rounds=10)

    assert len(receiver.wait_for_requests(event_count)) == event_count
    with app.app_context():
        assert set(db.session.scalars(db.select(Delivery.state))) == {"succeeded"}
        assert db.session.scalar(db.select(db.func.count(Delivery.id))) == event_count
        assert db.session.scalar(db.select(db.func.count(Attempt.id))) == event_count


def test_commit_after_the_job_starts_queues_another(app, users, receiver):
    """The job clears its flag before it reads the events, so a later commit queues a job."""
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        deal_event(account_id)
        assert queue.request_dispatch() == 0
        # What a dispatch job does first.
        queue.clear_dispatch_flag()
        assert queue.request_dispatch() == 1


def test_failing_batch_falls_back_per_event(app, users, receiver, monkeypatch):
    """An event whose dispatch raises fails in its own job; the rest are delivered."""
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        event_ids = [deal_event(account_id) for _ in range(3)]
        queue.get_redis().flushdb()
    poison = event_ids[1]
    matching = events.matching

    def matching_or_raise(automations, event):
        if event.id == poison:
            raise RuntimeError("cannot dispatch this event")
        return matching(automations, event)

    monkeypatch.setattr(events, "matching", matching_or_raise)
    with app.app_context():
        assert jobs.dispatch_waiting() == 0
    assert queued_job_count(app) == 3

    run_jobs(app)

    assert len(receiver.wait_for_requests(2)) == 2
    with app.app_context():
        waiting = db.session.scalars(db.select(Event.id).where(Event.dispatched_at.is_(None)))
        assert list(waiting) == [poison]


def test_sweep_queues_batch_and_stuck_events(app, users, receiver):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        fresh = deal_event(account_id)
        stuck = deal_event(account_id)
        db.session.execute(
            update(Event)
            .where(Event.id == stuck)
            .values(occurred_at=utcnow() - timedelta(seconds=deliveries.STUCK_EVENT_SECONDS + 5))
        )
        db.session.commit()
        queue.get_redis().flushdb()

        counts = deliveries.sweep()

    assert counts["events"] == 2
    with app.app_context():
        job_ids = queue.get_queue("deliveries").job_ids
    # One batch job for both events, and a job of its own for the one that waited long.
    assert len(job_ids) == 2
    assert any(job_id.endswith(f"-dispatch-{stuck}") for job_id in job_ids)
    assert not any(job_id.endswith(f"-dispatch-{fresh}") for job_id in job_ids)

    run_jobs(app)

    assert len(receiver.wait_for_requests(2)) == 2
