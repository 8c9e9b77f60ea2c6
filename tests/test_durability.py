"""Check that delivery loses no work and keeps Redis small.

A Redis outage, a worker killed in the middle of a request, and two workers
racing the sweep must each leave every event delivered, with one successful
attempt per delivery in the log. A delivery counts as succeeded only after a
2xx, and a permanently failing receiver must not make Redis grow with the
number of events. Worker processes are real `flask worker` processes that
share the test's database and private Redis.
"""

import collections
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from pdauto import crm, deliveries, events, jobs, queue
from pdauto.extensions import db
from pdauto.models import Attempt, Automation, Deal, Delivery, Event, utcnow
from pdauto.worker import run_sweep_once
from tests.conftest import LOOPBACK, run_jobs
from tests.factories import make_automation

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORKER_STOP_SECONDS = 15

# Event counts of the flood test, which compares the Redis keys after the large
# flood with those after the small one. With 1,000 events the test took 45 s on
# a shared 2-CPU VM, so it uses fewer.
FLOOD_SMALL = 100
FLOOD_LARGE = 2000
RETRIED_DELIVERIES = 100


# Helpers


def add_deal_events(account_id, count, batch_size=100):
    """Create `count` deals and their "created" Events, `batch_size` per transaction.

    Returns the event ids. Nothing is queued, so the caller queues them or leaves
    them for the sweep. Call in an app context.
    """
    event_ids = []
    for start in range(0, count, batch_size):
        deals = [
            Deal(account_id=account_id, name=f"Deal {number}", value=100, status="open")
            for number in range(start, min(start + batch_size, count))
        ]
        db.session.add_all(deals)
        db.session.flush()
        batch = [
            events.record_change(deal, "created", events.diff({}, events.snapshot(deal)))
            for deal in deals
        ]
        db.session.commit()
        event_ids.extend(event.id for event in batch)
    return event_ids


def wait_until(condition, timeout, describe):
    """Poll `condition` every 0.1 s until it returns a true value.

    After `timeout` seconds the test fails with the text that `describe()` returns.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{describe()} (waited {timeout} s)")
        time.sleep(0.1)


def delivery_states(app):
    with app.app_context():
        rows = db.session.execute(
            db.select(Delivery.state, db.func.count()).group_by(Delivery.state)
        )
        return dict(rows.all())


def successes_per_delivery(app):
    """Return {delivery id: number of its attempts with a 2xx status}, for every delivery."""
    with app.app_context():
        counts = dict.fromkeys(db.session.scalars(db.select(Delivery.id)), 0)
        two_xx = db.session.scalars(
            db.select(Attempt.delivery_id).where(
                Attempt.response_status >= 200, Attempt.response_status < 300
            )
        )
        for delivery_id in two_xx:
            counts[delivery_id] += 1
        return counts


def redis_keys(client):
    """Return {key: seconds to live, or -1 for no TTL} for every key in the private Redis.

    The redis_client fixture empties the server before each test, so every key
    belongs to this test's app and its workers.
    """
    return {key.decode(): client.ttl(key) for key in client.scan_iter(count=1000)}


# Worker processes


class WorkerProcess:
    """A `flask worker` process, in its own process group, whose output goes to a file.

    The worker forks an RQ scheduler process, which outlives a worker killed
    with SIGKILL, so the test kills the whole group.
    """

    def __init__(self, name, arguments, environment, log_path):
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--name", name]
                + list(arguments),
                cwd=PROJECT_DIR,
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self):
        """Kill the worker and its scheduler with SIGKILL, as when their host dies."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=WORKER_STOP_SECONDS)

    def stop(self):
        """Ask RQ for a warm shutdown and return the worker's exit code.

        Whatever is left of the process group after that, or after a timeout,
        is killed.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        exit_code = self.process.poll()
        self.kill()
        return exit_code

    def output(self):
        return self.log_path.read_text(errors="replace")


def worker_environment(app, tmp_path, smtp_server, settings):
    """Return the environment that gives a worker process the test app's settings."""
    config = app.config
    environment = dict(os.environ)
    environment.update(
        {
            "DATABASE_URL": config["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": config["REDIS_URL"],
            "PDAUTO_REDIS_PREFIX": config["PDAUTO_REDIS_PREFIX"],
            "PDAUTO_ALLOWED_NETWORKS": ",".join(LOOPBACK),
            "PDAUTO_INSTANCE_DIR": str(tmp_path),
            "PDAUTO_BASE_URL": config["PDAUTO_BASE_URL"],
            "SECRET_KEY": config["SECRET_KEY"],
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_server.port),
            "DELIVERY_CONNECT_TIMEOUT_SECONDS": str(config["DELIVERY_CONNECT_TIMEOUT_SECONDS"]),
            "DELIVERY_TIMEOUT_SECONDS": str(config["DELIVERY_TIMEOUT_SECONDS"]),
        }
    )
    environment.update({name: str(value) for name, value in settings.items()})
    return environment


@pytest.fixture
def start_worker(app, tmp_path, smtp_server):
    """Start `flask worker` processes on the test's database and Redis, and stop them after.

    `start_worker(name, *arguments, **settings)` returns a WorkerProcess. The
    settings are environment variables such as DELIVERY_LEASE_SECONDS=3.
    """
    started = []

    def start(name, *arguments, **settings):
        environment = worker_environment(app, tmp_path, smtp_server, settings)
        full_name = f"{app.config['PDAUTO_REDIS_PREFIX']}-{name}"
        worker = WorkerProcess(full_name, arguments, environment, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# Redis outages


def test_redis_outage_change_commits_then_delivers(
    app, users, receiver, manager_client, redis_server
):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))

    redis_server.stop()
    try:
        response = manager_client.post(
            "/deals/new", data={"name": "Outage deal", "value": "500", "status": "open"}
        )
        with app.app_context():
            deal = db.session.scalar(db.select(Deal))
            event = db.session.scalar(db.select(Event))
            deal_id = deal.id if deal else None
            event_fields = None
            if event is not None:
                event_fields = (event.model, event.action, event.record_id, event.dispatched_at)
    finally:
        redis_server.start()
    restarted_at = time.monotonic()

    assert response.status_code == 302
    assert deal_id is not None
    assert event_fields == ("deal", "created", deal_id, None)
    assert receiver.requests == []

    counts = run_sweep_once(app)
    run_jobs(app)

    assert counts["events"] == 1
    [request] = receiver.wait_for_requests(1)
    assert request.json()["event_model_id"] == deal_id
    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        assert delivery.state == "succeeded"
        assert request.headers["webhook-id"] == delivery.id
    log.info(
        "Redis outage: delivered %.2f s after Redis restarted", time.monotonic() - restarted_at
    )


def test_retry_survives_redis_flush(app, users, receiver, redis_client):
    receiver.respond("/hook", status=503)
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        crm.create_record("deal", account_id, {"name": "Big deal", "value": 100})
    run_jobs(app)
    assert delivery_states(app) == {"pending": 1}

    redis_client.flushall()
    receiver.respond("/hook", status=200)
    with app.app_context():
        # The retry is due now, as if its delay had passed.
        db.session.execute(update(Delivery).values(next_attempt_at=utcnow()))
        db.session.commit()
    counts = run_sweep_once(app)
    run_jobs(app)

    assert counts["deliveries"] == 1
    assert len(receiver.wait_for_requests(2)) == 2
    assert delivery_states(app) == {"succeeded": 1}


# A worker killed in the middle of a request


def test_killed_worker_delivery_retried(app, users, receiver, start_worker):
    # The lease outlasts the request deadline, as it must in production.
    settings = {
        "DELIVERY_TIMEOUT_SECONDS": 5,
        "DELIVERY_LEASE_SECONDS": 6,
        "SWEEP_INTERVAL_SECONDS": 0.5,
    }
    receiver.respond("/hook", status=200, delay=60)
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        crm.create_record("deal", account_id, {"name": "Big deal", "value": 100})

    first = start_worker("first", "--no-sweep", **settings)
    [held] = receiver.wait_for_requests(1, timeout=60)
    first.kill()
    killed_at = time.monotonic()
    receiver.respond("/hook", status=200)

    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        delivery_id = delivery.id
        assert delivery.state == "sending"
        assert delivery.attempt_count == 0

    second = start_worker("second", **settings)
    wait_until(
        lambda: delivery_states(app) == {"succeeded": 1},
        timeout=60,
        describe=lambda: f"the delivery was not retried; second worker's log:\n{second.output()}",
    )
    recovery_seconds = time.monotonic() - killed_at

    requests = receiver.requests
    assert [request.headers["webhook-id"] for request in requests] == [delivery_id] * 2
    assert held.headers["webhook-id"] == delivery_id
    with app.app_context():
        [attempt] = db.session.scalars(db.select(Attempt)).all()
        assert attempt.succeeded
        assert attempt.response_status == 200
    assert successes_per_delivery(app) == {delivery_id: 1}
    assert "lease expired" in second.output()
    log.info("killed worker: delivered %.2f s after SIGKILL (lease 6 s)", recovery_seconds)


# Success needs a 2xx


def answer_raw(data):
    """Return a respond_with function that writes `data` and closes the connection."""

    def respond(exchange):
        exchange.write(data)

    return respond


def reset_connection(exchange):
    exchange.reset()


def close_silently(exchange):
    pass


def stall_after_headers(exchange):
    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
    exchange.wait(5)


# Each fault sets the receiver's response to "/hook".
FAULTS = {
    "500": lambda receiver: receiver.respond("/hook", status=500),
    "302": lambda receiver: receiver.respond(
        "/hook", status=302, headers={"Location": receiver.url("/other")}
    ),
    "garbage": lambda receiver: receiver.respond_with(
        "/hook", answer_raw(b"this is not HTTP at all\r\n\r\n")
    ),
    "reset": lambda receiver: receiver.respond_with("/hook", reset_connection),
    "closed_without_answer": lambda receiver: receiver.respond_with("/hook", close_silently),
    "200_body_cut_short": lambda receiver: receiver.respond_with(
        "/hook", answer_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    ),
    "200_past_deadline": lambda receiver: receiver.respond_with("/hook", stall_after_headers),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_no_success_without_2xx(app, users, receiver, fault):
    app.config["DELIVERY_TIMEOUT_SECONDS"] = 1.0
    FAULTS[fault](receiver)
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"), failure_email="")
        crm.create_record("deal", account_id, {"name": "Big deal", "value": 100})

    run_jobs(app)

    assert len(receiver.requests) == 1
    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        [attempt] = delivery.attempts
        assert delivery.state == "pending"
        assert delivery.completed_at is None
        assert not attempt.succeeded
        assert attempt.outcome != "success"
        assert attempt.error != ""


def answer_with_status(exchange):
    """Send a response whose status code is the last segment of the path /status/<code>."""
    code = int(exchange.request.path.rsplit("/", 1)[1])
    # The receiver closes the connection after each answer; the header tells
    # the client not to reuse it.
    head = f"HTTP/1.1 {code} Status\r\nConnection: close\r\n"
    if 100 <= code < 200:
        # A 1xx has no body. http.client skips a 100 Continue and then finds
        # the connection closed.
        exchange.write(f"{head}\r\n".encode())
    else:
        exchange.write(f"{head}Content-Length: 2\r\n\r\nok".encode())


def test_succeeded_iff_2xx_for_codes_100_to_599(app, users, receiver):
    app.config["DELIVERY_TIMEOUT_SECONDS"] = 1.0
    codes = range(100, 600)
    receiver.respond_with("*", answer_with_status)
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/status/0"), failure_email="")
        automation_id = automation.id
        action = automation.actions[0]
        delivery_ids = [
            delivery_id
            for event_id in add_deal_events(account_id, len(codes))
            for delivery_id in deliveries.dispatch_event(event_id)
        ]
        sender = jobs.get_sender()

        wrong = []
        for code, delivery_id in zip(codes, delivery_ids, strict=True):
            action.url = receiver.url(f"/status/{code}")
            # A 410 pauses the automation, so it is made active before each code.
            db.session.execute(
                update(Automation).where(Automation.id == automation_id).values(active=True)
            )
            db.session.commit()

            state = deliveries.attempt_delivery(delivery_id, sender)

            attempt = db.session.scalar(
                db.select(Attempt).where(Attempt.delivery_id == delivery_id)
            )
            expected = 200 <= code < 300
            if attempt is None:
                wrong.append((code, state, "no attempt recorded", None))
            elif (state == "succeeded") != expected or attempt.succeeded != expected:
                wrong.append((code, state, attempt.outcome, attempt.response_status))

    assert wrong == []
    assert len(receiver.requests) == len(codes)
    assert delivery_states(app)["succeeded"] == 100


# Two workers and the sweep


def test_two_workers_and_sweep_deliver_500_events(app, users, receiver, start_worker):
    event_count = 500
    settings = {"SWEEP_INTERVAL_SECONDS": 0.5, "DELIVERY_TIMEOUT_SECONDS": 10}
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        event_ids = add_deal_events(account_id, event_count)
        # Half are queued, as after a commit, and the sweep must find the other half.
        queue.enqueue_dispatches(event_ids[::2])

    started_at = time.monotonic()
    workers = [start_worker(f"worker{number}", **settings) for number in (1, 2)]
    wait_until(
        lambda: delivery_states(app) == {"succeeded": event_count},
        timeout=120,
        describe=lambda: f"not every delivery succeeded: {delivery_states(app)}",
    )
    elapsed = time.monotonic() - started_at
    exit_codes = [worker.stop() for worker in workers]
    outputs = [worker.output() for worker in workers]

    assert exit_codes == [0, 0]
    for output in outputs:
        assert "pdauto.jobs.dispatch_" in output
    assert any("sweep queued" in output for output in outputs)

    successes = successes_per_delivery(app)
    assert len(successes) == event_count
    assert collections.Counter(successes.values()) == {1: event_count}
    with app.app_context():
        delivered_events = db.session.scalar(db.select(db.func.count(Delivery.event_id.distinct())))
        attempt_count = db.session.scalar(db.select(db.func.count(Attempt.id)))
    assert delivered_events == event_count

    webhook_ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert set(webhook_ids) == set(successes)
    # Delivery is at least once, so a repeated webhook-id is allowed, but the
    # log must show each repeat as an attempt.
    duplicates = len(webhook_ids) - len(set(webhook_ids))
    assert attempt_count == len(webhook_ids)
    log.info(
        "two workers: %d events delivered in %.1f s, %d repeated webhook-ids",
        event_count,
        elapsed,
        duplicates,
    )


# Redis memory


def fail_with_500(exchange):
    # One write, so that no delayed ACK slows the loop down.
    exchange.write(
        b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 4\r\n\r\ndown"
    )


def row_job_keys(keys):
    """Return the keys of jobs and results named after one event or delivery."""
    return sorted(key for key in keys if "-dispatch-" in key or "-deliver-" in key)


def keys_without_ttl(keys, prefixes=("rq:job:", "rq:results:", "rq:worker:")):
    return sorted(key for key, ttl in keys.items() if key.startswith(prefixes) and ttl < 0)


def fixed_keys(keys):
    """Return the keys other than those of worker processes, which expire 60 s after a stop."""
    return {key: ttl for key, ttl in keys.items() if not key.startswith("rq:worker:")}


# The first retry waits an hour, so that only the retries the test makes due are sent,
# however long the flood takes on a slow machine.
@pytest.mark.parametrize("app_overrides", [{"DELIVERY_RETRY_SCHEDULE_SECONDS": [3600, 7200]}])
def test_failing_flood_keeps_redis_bounded(app, users, receiver, redis_client, smtp_server):
    receiver.respond_with("/hook", fail_with_500)
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))

    snapshots = {}
    total = 0
    for target in (FLOOD_SMALL, FLOOD_LARGE):
        with app.app_context():
            queue.enqueue_dispatches(add_deal_events(account_id, target - total))
        total = target
        run_jobs(app, rounds=50)
        snapshots[total] = redis_keys(redis_client)

    # The retries of the oldest deliveries come due; the sweep queues them.
    with app.app_context():
        retry_ids = db.session.scalars(
            db.select(Delivery.id).order_by(Delivery.created_at).limit(RETRIED_DELIVERIES)
        ).all()
        db.session.execute(
            update(Delivery).where(Delivery.id.in_(retry_ids)).values(next_attempt_at=utcnow())
        )
        db.session.commit()
    counts = run_sweep_once(app)
    run_jobs(app, rounds=50)
    after_retries = redis_keys(redis_client)

    assert counts["deliveries"] == RETRIED_DELIVERIES
    assert delivery_states(app) == {"pending": total}
    assert len(receiver.requests) == total + RETRIED_DELIVERIES
    small, large = fixed_keys(snapshots[FLOOD_SMALL]), fixed_keys(snapshots[FLOOD_LARGE])
    retried = fixed_keys(after_retries)
    # Per-address and per-queue keys may appear as the flood goes on, but per-event keys not.
    assert len(large) <= len(small) + 2, sorted(set(large) - set(small))
    assert len(retried) <= len(small) + 2, sorted(set(retried) - set(small))
    for keys in (snapshots[FLOOD_SMALL], snapshots[FLOOD_LARGE], after_retries):
        assert row_job_keys(keys) == []
        assert keys_without_ttl(keys) == []
    log.info(
        "failing flood: %d Redis keys after %d events, %d after %d, %d after %d retries",
        len(snapshots[FLOOD_SMALL]),
        FLOOD_SMALL,
        len(snapshots[FLOOD_LARGE]),
        FLOOD_LARGE,
        len(after_retries),
        RETRIED_DELIVERIES,
    )
