"""Measurements a–e and g: each times pdauto and its baseline in the same run.

Every function takes the running `Bench` and returns a list of `Result` rows.
"""

import contextlib
import math
import statistics
import time
import uuid
from dataclasses import dataclass, field
from unittest import mock

import requests

SAMPLE_PAYLOAD = {
    "trigger": "Person created",
    "event_model": "person",
    "event_action": "created",
    "event_model_id": 123456,
    "event_id": 654321,
    "occurred_at": "2026-12-04T15:17:25Z",
}


@dataclass
class Result:
    """One row of the results table."""

    key: str
    title: str
    pdauto: str
    baseline: str
    ratio: float | None = None
    target: str = "—"
    met: bool | None = None
    notes: list[str] = field(default_factory=list)


def percentile(values, percent):
    """Return the nearest-rank percentile of `values`."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


# --- Helpers shared by the measurements ------------------------------------------


def raw_post_loop(url, count):
    """POST the sample payload `count` times on one requests.Session; return seconds."""
    with requests.Session() as session:
        session.post(url, json=SAMPLE_PAYLOAD, timeout=10).raise_for_status()
        started = time.perf_counter()
        for _ in range(count):
            response = session.post(url, json=SAMPLE_PAYLOAD, timeout=10)
            response.raise_for_status()
        return time.perf_counter() - started


def raw_post_latencies(bench, count, pause):
    """Return (round-trip ms, one-way ms) lists of `count` single POSTs on an idle system.

    One-way is the time from the call to the moment the receiver read the body.
    """
    receiver = bench.receiver
    round_trips, one_ways = [], []
    receiver.notify_each(True)
    try:
        with requests.Session() as session:
            session.post(receiver.url(), json=SAMPLE_PAYLOAD, timeout=10)
            receiver.wait_for_one(timeout=10)
            for _ in range(count):
                time.sleep(pause)
                started_wall = time.time()
                started = time.perf_counter()
                session.post(receiver.url(), json=SAMPLE_PAYLOAD, timeout=10).raise_for_status()
                round_trips.append((time.perf_counter() - started) * 1000)
                received_at = receiver.wait_for_one(timeout=10)
                one_ways.append((received_at - started_wall) * 1000)
    finally:
        receiver.notify_each(False)
    return round_trips, one_ways


def commit_events(bench, count, model="person"):
    """Create `count` records through pdauto.crm and return their event ids, unqueued.

    The records and events are committed by the same code as in production.
    Only the enqueue of each dispatch job is held back, so that the caller can
    queue them all at once with enqueue_dispatches.
    """
    from pdauto import crm, queue
    from pdauto.extensions import db

    event_ids = []
    patches = [mock.patch.object(queue, "enqueue_dispatch", event_ids.append)]
    if hasattr(queue, "enqueue_dispatches"):
        patches.append(mock.patch.object(queue, "enqueue_dispatches", event_ids.extend))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        for index in range(count):
            crm.create_record(model, bench.account_id, _record_fields(model, index))
    db.session.remove()
    return event_ids


def _record_fields(model, index):
    if model == "person":
        return {"first_name": "Ada", "last_name": f"Bench {index}", "email": "ada@example.com"}
    return {"name": f"Bench company {index}"}


def enqueue_dispatches(event_ids):
    """Queue the dispatch jobs of committed events with pdauto's own enqueue helper."""
    from pdauto import queue

    if hasattr(queue, "enqueue_dispatches"):
        queue.enqueue_dispatches(list(event_ids))
    else:
        for event_id in event_ids:
            queue.enqueue_dispatch(event_id)


def delivered_counts(event_ids):
    """Return (succeeded deliveries, attempts) of the given events."""
    from pdauto.extensions import db
    from pdauto.models import Attempt, Delivery

    succeeded = attempts = 0
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        succeeded += db.session.scalar(
            db.select(db.func.count(Delivery.id)).where(
                Delivery.event_id.in_(chunk), Delivery.state == "succeeded"
            )
        )
        attempts += db.session.scalar(
            db.select(db.func.count(Attempt.id))
            .join(Delivery, Attempt.delivery_id == Delivery.id)
            .where(Delivery.event_id.in_(chunk))
        )
    db.session.remove()
    return succeeded, attempts


def check_all_delivered(event_ids, expected, timeout=30):
    """Wait until the events' deliveries are recorded as succeeded, once each; raise if not.

    A webhook reaches the receiver before the worker commits its attempt, so
    the last few rows can lag the receiver by a moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        succeeded, attempts = delivered_counts(event_ids)
        if (succeeded, attempts) == (expected, expected) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if succeeded != expected or attempts != expected:
        raise RuntimeError(
            f"expected {expected} succeeded deliveries with one attempt each, "
            f"found {succeeded} succeeded and {attempts} attempts"
        )


def event_id_of(record):
    """Return the id of the Event that created `record`."""
    from pdauto.extensions import db
    from pdauto.models import Event

    return db.session.scalar(
        db.select(Event.id).where(
            Event.model == record.event_model,
            Event.record_id == record.id,
            Event.action == "created",
        )
    )


def check_fanout_delivered(event_id, expected, timeout=30):
    """Wait until one event's `expected` deliveries have succeeded once each; raise if not."""
    from pdauto.extensions import db
    from pdauto.models import Attempt, Delivery

    deadline = time.monotonic() + timeout
    while True:
        succeeded = db.session.scalar(
            db.select(db.func.count(Delivery.id)).where(
                Delivery.event_id == event_id, Delivery.state == "succeeded"
            )
        )
        attempts = db.session.scalar(
            db.select(db.func.count(Attempt.id))
            .join(Delivery, Attempt.delivery_id == Delivery.id)
            .where(Delivery.event_id == event_id)
        )
        db.session.remove()
        if (succeeded, attempts) == (expected, expected) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if succeeded != expected or attempts != expected:
        raise RuntimeError(
            f"event {event_id}: expected {expected} succeeded deliveries with one attempt "
            f"each, found {succeeded} succeeded and {attempts} attempts"
        )


def _wait_timeout(count):
    # Allows 5 deliveries a second. The slowest rate seen, with one worker on a
    # 2-core machine under a load average of 6, was about 12.
    return max(60.0, count / 5)


# --- a: the raw client ---------------------------------------------------------------


def measure_raw_client(bench):
    """a: the requests.Session loop and single-POST latency, and pdauto's Sender alone."""
    from pdauto.webhooks import WebhookRequest

    sizes = bench.sizes
    url = bench.receiver.url()
    elapsed = raw_post_loop(url, sizes.loop_posts)
    loop_rate = sizes.loop_posts / elapsed
    round_trips, one_ways = raw_post_latencies(bench, sizes.latency_samples, pause=0.005)

    sender = bench.sender()
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    requests_ = [
        WebhookRequest(
            url=url, payload=SAMPLE_PAYLOAD, webhook_id=f"msg_{index}", secrets=(secret,)
        )
        for index in range(sizes.loop_posts)
    ]
    sender.send(requests_[0])
    started = time.perf_counter()
    for request in requests_:
        outcome = sender.send(request)
        if not outcome.succeeded:
            raise RuntimeError(f"Sender.send failed: {outcome.kind}: {outcome.error}")
    sender_rate = sizes.loop_posts / (time.perf_counter() - started)

    return [
        Result(
            "a",
            "raw POST loop (requests.Session) vs pdauto Sender.send loop",
            f"{sender_rate:,.0f} POST/s (Sender)",
            f"{loop_rate:,.0f} POST/s",
            ratio=sender_rate / loop_rate,
            notes=[
                f"{sizes.loop_posts:,} sequential POSTs on one keep-alive connection",
                f"single raw POST, {len(round_trips)} samples: round trip p50 "
                f"{percentile(round_trips, 50):.2f} ms, p99 {percentile(round_trips, 99):.2f} ms; "
                f"call to body received p50 {percentile(one_ways, 50):.2f} ms",
            ],
        )
    ]


# --- b: throughput -------------------------------------------------------------------


def measure_throughput(bench):
    """b: N events committed, then queued at once, until all N webhooks are received."""
    sizes = bench.sizes
    elapsed = raw_post_loop(bench.receiver.url(), sizes.loop_posts)
    loop_rate = sizes.loop_posts / elapsed

    results = []
    for worker_count in (1, 2):
        bench.ensure_workers(worker_count)
        rate, commit_rate = _run_throughput(bench, sizes.throughput_events)
        ratio = rate / loop_rate
        one_worker = worker_count == 1
        results.append(
            Result(
                f"b{worker_count}",
                f"throughput, {worker_count} worker{'s' if worker_count > 1 else ''}",
                f"{rate:,.0f} webhooks/s",
                f"{loop_rate:,.0f} POST/s",
                ratio=ratio,
                target="≥ 0.5" if one_worker else "—",
                met=(ratio >= 0.5) if one_worker else None,
                notes=[
                    f"{sizes.throughput_events:,} events; committing them through "
                    f"pdauto.crm ran at {commit_rate:,.0f} events/s (not timed)",
                ],
            )
        )
    return results


def _run_throughput(bench, count):
    commit_started = time.perf_counter()
    event_ids = commit_events(bench, count)
    commit_rate = count / (time.perf_counter() - commit_started)

    # The clock starts before the jobs are queued, so queueing is timed too.
    bench.receiver.reset()
    started = time.time()
    enqueue_dispatches(event_ids)
    finished = bench.receiver.wait_for_count(count, timeout=_wait_timeout(count))
    check_all_delivered(event_ids, count)
    return count / (finished - started), commit_rate


# --- c: latency ----------------------------------------------------------------------


def measure_latency(bench):
    """c: one event at a time, from its commit to the webhook's arrival.

    The notes also give the time from the call to pdauto.crm.create_record, which
    adds the INSERTs and the commit itself.
    """
    from sqlalchemy import event as sqlalchemy_event
    from sqlalchemy.orm import Session

    from pdauto import crm
    from pdauto.extensions import db

    sizes = bench.sizes
    pause = 0.02
    round_trips, one_ways = raw_post_latencies(bench, sizes.latency_samples, pause)
    bench.ensure_workers(1)

    commits = []

    def note_commit(session):
        commits.append(time.time())

    latencies, from_calls, calls, enqueues, event_ids = [], [], [], [], []
    receiver = bench.receiver
    receiver.notify_each(True)
    sqlalchemy_event.listen(Session, "after_commit", note_commit)
    try:
        for index in range(sizes.latency_samples + 5):
            time.sleep(pause)
            commits.clear()
            started = time.time()
            record = crm.create_record("person", bench.account_id, _record_fields("person", index))
            returned_at = time.time()
            [committed_at] = commits
            event_ids.append(event_id_of(record))
            received_at = receiver.wait_for_one(timeout=30)
            if index >= 5:  # the first few warm the worker's caches
                latencies.append((received_at - committed_at) * 1000)
                from_calls.append((received_at - started) * 1000)
                calls.append((returned_at - started) * 1000)
                enqueues.append((returned_at - committed_at) * 1000)
            db.session.remove()
    finally:
        sqlalchemy_event.remove(Session, "after_commit", note_commit)
        receiver.notify_each(False)
    check_all_delivered(event_ids, len(event_ids))

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    raw_p50 = percentile(round_trips, 50)
    ratio = p50 / raw_p50
    call_p50 = percentile(from_calls, 50)
    return [
        Result(
            "c",
            "latency, commit to receipt, p50 (p99)",
            f"{p50:.1f} ms ({p99:.1f} ms)",
            f"{raw_p50:.2f} ms ({percentile(round_trips, 99):.2f} ms)",
            ratio=ratio,
            target="≤ 5",
            met=ratio <= 5,
            notes=[
                f"{len(latencies)} events, one at a time, {pause * 1000:.0f} ms apart, one "
                "worker; the clock starts when the commit of the record and its event "
                "returns (SQLAlchemy's after_commit), so it includes the enqueue",
                f"from the call to pdauto.crm.create_record instead: p50 {call_p50:.1f} ms "
                f"(p99 {percentile(from_calls, 99):.1f} ms), {call_p50 / raw_p50:.2f} times "
                f"the raw round trip; the call itself took p50 {percentile(calls, 50):.1f} ms, "
                f"{percentile(enqueues, 50):.1f} ms of it after the commit",
                f"baseline is a raw POST's round trip; its call-to-body-received time is "
                f"p50 {percentile(one_ways, 50):.2f} ms",
            ],
        )
    ]


# --- d: fan-out ----------------------------------------------------------------------


def measure_fanout(bench):
    """d: one event that matches N automations, until all N webhooks are received."""
    from pdauto import crm
    from pdauto.extensions import db

    sizes = bench.sizes
    count = sizes.fanout
    bench.create_fanout_automations(count)
    baseline = raw_post_loop(bench.receiver.url("/fanout"), count)

    results = []
    for worker_count in (1, 2):
        bench.ensure_workers(worker_count)
        bench.receiver.reset()
        started = time.time()
        record = crm.create_record(
            "company", bench.account_id, {"name": f"Fan-out {uuid.uuid4().hex}"}
        )
        finished = bench.receiver.wait_for_count(count, timeout=_wait_timeout(count))
        check_fanout_delivered(event_id_of(record), count)
        db.session.remove()
        elapsed = finished - started
        ratio = elapsed / baseline
        one_worker = worker_count == 1
        results.append(
            Result(
                f"d{worker_count}",
                f"fan-out to {count:,} automations, {worker_count} "
                f"worker{'s' if worker_count > 1 else ''}",
                f"{elapsed:.2f} s",
                f"{baseline:.2f} s",
                ratio=ratio,
                target="≤ 2" if one_worker else "—",
                met=(ratio <= 2) if one_worker else None,
                notes=[f"baseline: {count:,} raw POSTs in one loop"] if one_worker else [],
            )
        )
    return results


# --- e: the failure-email limit ------------------------------------------------------


def measure_limit_decisions(bench):
    """e: RollingLimiter.reserve calls per second against a Redis PING loop."""
    from pdauto import notify, queue

    count = bench.sizes.limit_decisions
    bench.ensure_workers(0)
    client = queue.get_redis()
    limiter = notify.failure_limiter()
    addresses = [f"ops{index}@example.com" for index in range(1000)]

    # Rounds of PINGs and decisions alternate, so a change in machine load
    # during the run affects both rates alike.
    rounds = 10
    per_round = count // rounds
    ping_seconds = reserve_seconds = 0.0
    allowed = 0
    now = time.time()
    client.ping()
    for round_index in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            client.ping()
        ping_seconds += time.perf_counter() - started

        started = time.perf_counter()
        for offset in range(per_round):
            index = round_index * per_round + offset
            if limiter.reserve(addresses[index % len(addresses)], now=now + index * 0.001).allowed:
                allowed += 1
        reserve_seconds += time.perf_counter() - started
    count = rounds * per_round
    ping_rate = count / ping_seconds
    reserve_rate = count / reserve_seconds

    ratio = reserve_rate / ping_rate
    return [
        Result(
            "e",
            "failure-email limit decisions per second, one process",
            f"{reserve_rate:,.0f} decisions/s",
            f"{ping_rate:,.0f} PING/s",
            ratio=ratio,
            target="≥ 0.5",
            met=ratio >= 0.5,
            notes=[
                f"{count:,} decisions over {len(addresses):,} addresses with the limits "
                f"{notify.EMAIL_LIMITS}: {allowed:,} allowed, {count - allowed:,} held back",
            ],
        )
    ]


# --- g: worker memory ----------------------------------------------------------------


def measure_memory(bench):
    """g: RSS of one fresh worker at 10 % and at 100 % of N deliveries."""
    sizes = bench.sizes
    total = sizes.memory_deliveries
    batch = min(1000, max(total // 10, 1))
    bench.ensure_workers(0)
    [worker] = bench.ensure_workers(1)

    bench.receiver.reset()
    samples = {}  # deliveries received -> RSS bytes
    checkpoints = [round(total * step / 10) for step in range(1, 11)]
    committed = 0
    started = time.time()
    event_ids = []
    while committed < total:
        size = min(batch, total - committed)
        batch_ids = commit_events(bench, size)
        enqueue_dispatches(batch_ids)
        event_ids += batch_ids
        committed += size
        # Keep at most about two batches waiting, so the queue stays short.
        _wait_sampling(bench, worker, max(committed - batch, 0), checkpoints, samples)
    _wait_sampling(bench, worker, total, checkpoints, samples)
    finished = bench.receiver.last_received_at
    check_all_delivered(event_ids, total)

    at_tenth = samples[checkpoints[0]]
    at_end = samples[checkpoints[-1]]
    growth = (at_end - at_tenth) / at_tenth
    curve = ", ".join(f"{samples[point] / 2**20:.1f}" for point in checkpoints)
    return [
        Result(
            "g",
            f"worker RSS over {total:,} deliveries, growth from 10 % to 100 %",
            f"{at_end / 2**20:.1f} MiB at 100 %",
            f"{at_tenth / 2**20:.1f} MiB at 10 %",
            ratio=at_end / at_tenth,
            target="≤ 1.10",
            met=growth <= 0.10,
            notes=[
                f"growth {growth * 100:+.1f} %; RSS (MiB) at each tenth: {curve}; "
                f"peak {worker.peak_rss_bytes() / 2**20:.1f} MiB",
                f"sustained {total / (finished - started):,.0f} deliveries/s with one worker, "
                "events committed and queued in batches of "
                f"{batch:,} while it ran",
            ],
        )
    ]


def _wait_sampling(bench, worker, count, checkpoints, samples):
    deadline = time.monotonic() + _wait_timeout(count)
    while True:
        received = bench.receiver.count
        for point in checkpoints:
            if point not in samples and received >= point:
                samples[point] = worker.rss_bytes()
        if received >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the receiver got {received} of {count} requests")
        time.sleep(0.005)


def median_ms(seconds):
    return statistics.median(seconds) * 1000
