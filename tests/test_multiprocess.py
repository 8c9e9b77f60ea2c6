"""Three worker processes and the sweep deliver 2,000 events while the email limit holds.

The workers are `flask --app wsgi worker` processes, as in production, on the
test's database (PostgreSQL when PDAUTO_TEST_DATABASE_URL names one) and its
private Redis. The events are written in bulk without queueing, so the sweep
must find them. A second automation points at a failing URL, so the workers
raise failure emails for one address from three processes at once.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pdauto.extensions import db
from pdauto.models import Attempt, Deal, Delivery, Event
from tests.factories import make_automation

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 2000
WORKERS = 3
DEADLINE_SECONDS = 240


def worker_environment(app, smtp_server):
    config = app.config
    return {
        **os.environ,
        "DATABASE_URL": config["SQLALCHEMY_DATABASE_URI"].replace(
            "postgresql+psycopg://", "postgresql://"
        ),
        "REDIS_URL": config["REDIS_URL"],
        "PDAUTO_REDIS_PREFIX": config["PDAUTO_REDIS_PREFIX"],
        "PDAUTO_ALLOWED_NETWORKS": ",".join(config["PDAUTO_ALLOWED_NETWORKS"]),
        "SECRET_KEY": config["SECRET_KEY"],
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp_server.port),
        "SWEEP_INTERVAL_SECONDS": "1",
        "DELIVERY_CONNECT_TIMEOUT_SECONDS": "1",
        "DELIVERY_TIMEOUT_SECONDS": "3",
    }


def add_events_in_bulk(account_id, count):
    """Write deals and their created events in one transaction, queueing nothing."""
    deals = [Deal(account_id=account_id, name=f"Deal {i}", value=i) for i in range(count)]
    db.session.add_all(deals)
    db.session.flush()
    db.session.add_all(
        Event(account_id=account_id, model="deal", action="created", record_id=deal.id)
        for deal in deals
    )
    db.session.commit()
    return {deal.id for deal in deals}


def delivered_counts(automation_id):
    succeeded = db.session.scalar(
        db.select(db.func.count(Delivery.id)).where(
            Delivery.automation_id == automation_id, Delivery.state == "succeeded"
        )
    )
    db.session.remove()
    return succeeded


@pytest.mark.timeout(DEADLINE_SECONDS + 60)
def test_three_workers_and_sweep(app, users, receiver, make_listener, smtp_server):
    account_id = users["manager"][2]
    failing = make_listener()
    failing.close()
    receiver.respond("/hook", status=204)
    with app.app_context():
        good = make_automation(account_id, receiver.url("/hook"), name="Deal created")
        make_automation(
            account_id,
            f"http://127.0.0.1:{failing.port}/down",
            name="Deal created, failing",
            failure_email="ops@example.com",
        )
        good_id = good.id
        deal_ids = add_events_in_bulk(account_id, EVENTS)

    environment = worker_environment(app, smtp_server)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--name", f"w{n}"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for n in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        with app.app_context():
            while delivered_counts(good_id) < EVENTS and time.monotonic() < deadline:
                assert all(worker.poll() is None for worker in workers), "a worker exited"
                time.sleep(1)
        # The failure emails go out from the notices queue, after the deliveries.
        while not smtp_server.messages and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(2)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)

    with app.app_context():
        assert delivered_counts(good_id) == EVENTS
        successes = Counter(
            db.session.scalars(
                db.select(Attempt.delivery_id)
                .join(Delivery)
                .where(Delivery.automation_id == good_id, Attempt.succeeded.is_(True))
            )
        )
        failed_attempts = db.session.scalar(
            db.select(db.func.count(Attempt.id))
            .join(Delivery)
            .where(Delivery.automation_id != good_id)
        )
        undispatched = db.session.scalar(
            db.select(db.func.count(Event.id)).where(Event.dispatched_at.is_(None))
        )
    received = [request.json()["event_model_id"] for request in receiver.requests]

    assert len(successes) == EVENTS
    assert max(successes.values()) == 1
    assert undispatched == 0
    assert failed_attempts >= EVENTS
    assert set(received) == deal_ids
    # Every failure of the second automation goes to one address: at most 5 emails.
    assert 1 <= len(smtp_server.messages) <= 5
