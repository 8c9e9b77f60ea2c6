"""Turning events into deliveries, sending them, and recording every attempt.

A delivery moves pending -> sending -> succeeded, or back to pending with a
later next_attempt_at, or to failed after the last attempt. The move to
sending is a conditional UPDATE, so only one worker sends a given attempt, and
the lease lets the sweep take back a delivery whose worker died. A retry waits
in the database as next_attempt_at, and the sweep queues it when it is due.
"""

import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import insert, or_, update

from . import actions, events, metrics, notify, queue
from .extensions import db
from .models import Attempt, Automation, Delivery, Event, FailureNotice, new_delivery_id, utcnow
from .webhooks import WebhookRequest, mask_url

log = logging.getLogger(__name__)

# Attempt fields are capped to their column sizes.
MAX_ERROR_LENGTH = 500

# The maximum rows of each kind that one sweep queues. The next sweep takes the rest.
SWEEP_BATCH_SIZE = 1000

# Events waiting this long get a dispatch job each from the sweep.
STUCK_EVENT_SECONDS = 60

# A dispatch job writes the attempts that succeeded in groups of this many, or
# after this long, so a worker that dies loses the log rows of one group at most.
# Those deliveries stay under their lease, and the sweep sends them again.
SUCCESS_GROUP_SIZE = 50
SUCCESS_GROUP_SECONDS = 0.25


def build_payload(automation, event):
    """Return the body fields of a webhook for an event."""
    payload = {
        "trigger": automation.name,
        "event_model": event.model,
        "event_action": event.action,
        "event_model_id": int(event.record_id),
        "event_id": event.id,
        "occurred_at": event.occurred_at.isoformat(timespec="seconds") + "Z",
    }
    if event.action == "updated" and event.changes:
        payload["changes"] = event.changes
    return payload


def build_test_payload(name, event_model, event_action):
    """Return the body of a Test Now request: the four fields and test: true."""
    return {
        "trigger": name,
        "event_model": event_model,
        "event_action": event_action,
        "event_model_id": 0,
        "occurred_at": utcnow().isoformat(timespec="seconds") + "Z",
        "test": True,
    }


def build_request(action, webhook_id, payload):
    return WebhookRequest(
        url=action.url,
        payload=payload,
        webhook_id=webhook_id,
        secrets=tuple(action.active_secrets()),
        content_type=action.content_type,
        custom_headers=tuple(sorted((action.custom_headers or {}).items())),
    )


def dispatch_event(event_id, claim=False):
    """Create the deliveries of an event once, and return the ids to send now.

    With `claim`, the deliveries start in state sending under a lease, for the
    caller to send with send_claimed.
    """
    return dispatch_events([event_id], claim=claim)


def dispatch_events(event_ids, claim=False):
    """Create the deliveries of events once, and return their ids in event and step order."""
    firsts, _ = _dispatch(Event.id.in_(event_ids), claim)
    return [first.delivery_id for first in firsts]


def claim_event(event_id):
    """Create an event's deliveries under a lease; return their first attempts to send."""
    firsts, _ = _dispatch(Event.id == event_id, claim=True)
    return firsts


def claim_waiting(limit):
    """Claim up to `limit` events not yet dispatched, oldest first, as claim_event does.

    Returns (first attempts in event and step order, number of events claimed).
    An event that another worker claims first is skipped.
    """
    # On PostgreSQL, SKIP LOCKED lets a second worker take the next events rather
    # than wait for the first worker's claim and then find its batch short.
    # SQLite writes one at a time and renders no FOR UPDATE.
    oldest = (
        db.select(Event.id)
        .where(Event.dispatched_at.is_(None), Event.occurred_at <= utcnow())
        .order_by(Event.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return _dispatch(Event.id.in_(oldest.scalar_subquery()), claim=True)


def waiting_event_ids(limit):
    """Return the ids of the oldest events not yet dispatched, at most `limit`."""
    return db.session.scalars(
        db.select(Event.id)
        .where(Event.dispatched_at.is_(None), Event.occurred_at <= utcnow())
        .order_by(Event.id)
        .limit(limit)
    ).all()


def _dispatch(condition, claim):
    """Claim the events that fit `condition`, create their deliveries, and commit once.

    Claiming with a conditional UPDATE makes a second dispatch (the sweep racing
    a job) a no-op, and its RETURNING reads the events in the same statement.
    The first attempts' requests are built before the commit expires the rows,
    so sending them needs no further query. Returns (first attempts, number of
    events claimed).
    """
    now = utcnow()
    lease = timedelta(seconds=current_app.config["DELIVERY_LEASE_SECONDS"])
    claimed = db.session.scalars(
        update(Event)
        .where(condition, Event.dispatched_at.is_(None))
        .values(dispatched_at=now)
        .returning(Event),
        execution_options={"synchronize_session": False},
    ).all()
    if not claimed:
        db.session.rollback()
        return [], 0
    claimed.sort(key=lambda event: event.id)

    rows = []
    firsts = []
    candidates = {}
    for event in claimed:
        trigger = (event.account_id, event.model, event.action)
        if trigger not in candidates:
            candidates[trigger] = events.triggered_automations(*trigger)
        for automation in events.matching(candidates[trigger], event):
            # Steps run in their position order; each has its own delivery and outcome.
            for action in automation.actions:
                if action.removed_at is not None:
                    continue
                delivery_id = new_delivery_id()
                rows.append(
                    {
                        "id": delivery_id,
                        "account_id": event.account_id,
                        "event_id": event.id,
                        "action_id": action.id,
                        "automation_id": automation.id,
                        "next_attempt_at": now,
                        "state": "sending" if claim else "pending",
                        "lease_expires_at": now + lease if claim else None,
                        "created_at": now,
                    }
                )
                request = None
                if action.kind == "call_api":
                    payload = build_payload(automation, event)
                    request = build_request(action, delivery_id, payload)
                firsts.append(
                    _FirstAttempt(delivery_id, automation.id, event.account_id, 1, request)
                )
    if rows:
        db.session.execute(insert(Delivery), rows)
    db.session.commit()

    log.info(
        "events %s dispatched to %d deliveries",
        notify.describe_ids([event.id for event in claimed], limit=10),
        len(rows),
    )
    return firsts, len(claimed)


def claim(delivery_id, now):
    """Move a due delivery to sending under a lease; return whether it was claimed."""
    # NOTE: nothing checks that the lease outlasts DELIVERY_TIMEOUT_SECONDS. If it
    # does not, the sweep can start a second attempt while the first is still
    # sending, and whichever attempt finishes last sets the delivery's state.
    lease = timedelta(seconds=current_app.config["DELIVERY_LEASE_SECONDS"])
    claimed = db.session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.state == "pending",
            Delivery.next_attempt_at.is_not(None),
            Delivery.next_attempt_at <= now + timedelta(seconds=1),
        )
        .values(state="sending", lease_expires_at=now + lease)
    ).rowcount
    db.session.commit()
    return bool(claimed)


def retry_delay(attempt_count, outcome):
    """Return seconds until the next attempt, or None when attempts are used up."""
    schedule = current_app.config["DELIVERY_RETRY_SCHEDULE_SECONDS"]
    if attempt_count > len(schedule):
        return None

    # Jitter spreads retries of many deliveries to one receiver over time.
    delay = schedule[attempt_count - 1] * random.uniform(0.8, 1.2)
    if outcome.retry_after_seconds is not None:
        delay = max(delay, outcome.retry_after_seconds)
    return delay


def attempt_delivery(delivery_id, sender):
    """Send one attempt of a delivery and record it; return the new state or None.

    Returns None when the delivery was not due or another worker holds it.
    """
    now = utcnow()
    if not claim(delivery_id, now):
        return None
    return _attempt_claimed(db.session.get(Delivery, delivery_id), sender, now)


def _attempt_claimed(delivery, sender, now):
    """Send one attempt of a delivery this worker holds, record it, and return the new state."""
    automation = delivery.automation
    if automation.deleted_at is not None or not automation.active:
        return _hold_for_paused(delivery, automation)

    action = delivery.action
    if action.kind == "call_api":
        payload = build_payload(automation, delivery.event)
        outcome = sender.send(build_request(action, delivery.id, payload))
    else:
        outcome = actions.run(action, delivery.event, delivery.account_id)
    attempt = _record_attempt(delivery, outcome, now)
    state = _apply_outcome(delivery, attempt, outcome, now)
    db.session.commit()

    metrics.record_attempt(outcome.kind, outcome.duration_ms / 1000)
    _after_commit(delivery, outcome)
    return state


@dataclass
class _FirstAttempt:
    """The fields send_claimed needs of one delivery, read before a commit expires the rows."""

    delivery_id: str
    automation_id: int
    account_id: int
    number: int
    request: object  # a WebhookRequest, or None for a step that takes the ORM path


def send_claimed(firsts, sender, budget_seconds):
    """Send the first attempts that claim_event or claim_waiting returned, in order.

    Attempts that succeed are written in bulk, a group at a time. Any other
    outcome, and the Send email and Create task steps, take the same path as a
    retry (attempt_delivery). Once `budget_seconds` have passed, the rest go
    back to pending and are queued as jobs of their own. So a slow receiver
    holds back a few deliveries at most.
    """
    started = time.monotonic()
    group = _SuccessGroup()
    for index, first in enumerate(firsts):
        if time.monotonic() - started > budget_seconds:
            group.write()
            _release([later.delivery_id for later in firsts[index:]])
            break
        now = utcnow()
        if first.request is None:
            group.write()
            _attempt_claimed(db.session.get(Delivery, first.delivery_id), sender, now)
            continue
        outcome = sender.send(first.request)
        if outcome.succeeded:
            group.add(first, outcome, now)
            continue
        group.write()
        delivery = db.session.get(Delivery, first.delivery_id)
        attempt = _record_attempt(delivery, outcome, now)
        _apply_outcome(delivery, attempt, outcome, now)
        db.session.commit()
        metrics.record_attempt(outcome.kind, outcome.duration_ms / 1000)
        _after_commit(delivery, outcome)
    group.write()


class _SuccessGroup:
    """Successful attempts not yet written: one INSERT, one UPDATE and one commit per group."""

    def __init__(self):
        self.items = []
        self.since = time.monotonic()

    def add(self, first, outcome, now):
        if not self.items:
            self.since = time.monotonic()
        self.items.append((first, outcome, now))
        full = len(self.items) >= SUCCESS_GROUP_SIZE
        if full or time.monotonic() - self.since >= SUCCESS_GROUP_SECONDS:
            self.write()

    def write(self):
        if not self.items:
            return
        items, self.items = self.items, []
        db.session.execute(
            insert(Attempt),
            [
                {
                    "delivery_id": first.delivery_id,
                    "number": first.number,
                    "started_at": now,
                    "duration_ms": outcome.duration_ms,
                    "outcome": outcome.kind,
                    "succeeded": True,
                    "request_url": outcome.request_url,
                    "request_headers": outcome.request_headers,
                    "request_body": outcome.request_body,
                    "response_status": outcome.status,
                    "response_headers": outcome.response_headers,
                    "response_body": outcome.response_body,
                    "error": "",
                }
                for first, outcome, now in items
            ],
        )
        db.session.execute(
            update(Delivery),
            [
                {
                    "id": first.delivery_id,
                    "state": "succeeded",
                    "attempt_count": first.number,
                    "completed_at": now,
                    "last_status": outcome.status,
                    "last_error": "",
                    "lease_expires_at": None,
                }
                for first, outcome, now in items
            ],
        )
        automation_ids = {first.automation_id for first, _, _ in items}
        db.session.execute(
            update(Automation)
            .where(
                Automation.id.in_(automation_ids),
                or_(
                    Automation.failing_since.is_not(None),
                    Automation.pause_warning_sent_at.is_not(None),
                ),
            )
            .values(failing_since=None, pause_warning_sent_at=None)
        )
        db.session.commit()
        metrics.record_attempts(
            [(outcome.kind, outcome.duration_ms / 1000) for _, outcome, _ in items]
        )
        for first, _, _ in items:
            log.info(
                "delivery %s of automation %s (account %s) succeeded on attempt %d",
                first.delivery_id,
                first.automation_id,
                first.account_id,
                first.number,
            )


def _release(delivery_ids):
    """Give deliveries this job holds back to pending and queue a job for each."""
    db.session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.state == "sending")
        .values(state="pending", next_attempt_at=utcnow(), lease_expires_at=None)
    )
    db.session.commit()
    queue.enqueue_deliveries(delivery_ids)
    log.info("dispatch left %d deliveries to their own jobs", len(delivery_ids))


def _hold_for_paused(delivery, automation):
    if automation.deleted_at is not None:
        delivery.state = "failed"
        delivery.last_error = "the automation was deleted before this delivery was sent"
        delivery.completed_at = utcnow()
    else:
        # Held until the automation is resumed, which queues it again.
        delivery.state = "pending"
        delivery.next_attempt_at = None
    delivery.lease_expires_at = None
    db.session.commit()
    log.info(
        "delivery %s held: automation %s is %s",
        delivery.id,
        automation.id,
        automation.state,
    )
    return delivery.state


def _record_attempt(delivery, outcome, now):
    delivery.attempt_count += 1
    attempt = Attempt(
        delivery_id=delivery.id,
        number=delivery.attempt_count,
        started_at=now,
        duration_ms=outcome.duration_ms,
        outcome=outcome.kind,
        succeeded=outcome.succeeded,
        request_url=outcome.request_url,
        request_headers=outcome.request_headers,
        request_body=outcome.request_body,
        response_status=outcome.status,
        response_headers=outcome.response_headers,
        response_body=outcome.response_body,
        error=outcome.error[:MAX_ERROR_LENGTH],
    )
    db.session.add(attempt)
    db.session.flush()
    return attempt


def _apply_outcome(delivery, attempt, outcome, now):
    delivery.last_status = outcome.status
    delivery.last_error = outcome.error[:MAX_ERROR_LENGTH]
    delivery.lease_expires_at = None
    automation = delivery.automation
    if outcome.succeeded:
        delivery.state = "succeeded"
        delivery.completed_at = now
        automation.failing_since = None
        automation.pause_warning_sent_at = None
        log.info(
            "delivery %s of automation %s (account %s) succeeded on attempt %d",
            delivery.id,
            delivery.automation_id,
            delivery.account_id,
            attempt.number,
        )
        return delivery.state

    action = delivery.action
    address = failure_address(delivery)
    delay = retry_delay(delivery.attempt_count, outcome) if outcome.retryable else None
    if delay is None:
        delivery.state = "failed"
        delivery.completed_at = now
        delivery.next_attempt_at = None
    else:
        delivery.state = "pending"
        delivery.next_attempt_at = now + timedelta(seconds=delay)

    if address:
        notify.record_failure(
            account_id=delivery.account_id,
            automation_id=automation.id,
            address=address,
            url_masked=_target(action),
            error=outcome.error,
            occurred_at=now,
            delivery_id=delivery.id,
            attempt_id=attempt.id,
            kind=_notice_kind(action, outcome),
        )
    # The email shows the newest notice in full, so a warning or pause notice
    # is recorded after the failure notice of the same attempt.
    if outcome.kind == "gone":
        pause_automation(automation, f"the URL answered 410 Gone ({outcome.request_url})")
    else:
        _check_auto_pause(automation, delivery, now)
    log.warning(
        "delivery %s of automation %s (account %s) attempt %d failed (%s): %s; now %s",
        delivery.id,
        delivery.automation_id,
        delivery.account_id,
        attempt.number,
        outcome.kind,
        outcome.error,
        delivery.state,
    )
    return delivery.state


def _notice_kind(action, outcome):
    if outcome.kind == "gone":
        return "gone"
    return "failure" if action.kind == "call_api" else "step_failure"


def failure_address(delivery):
    """Return the address to tell about a delivery's failures, or "".

    Send email and Create task steps have no address of their own; they use
    the one of the automation's Call API step.
    """
    if delivery.action.failure_email:
        return delivery.action.failure_email
    for action in delivery.automation.actions:
        if action.failure_email:
            return action.failure_email
    return ""


def _target(action):
    """Return where an action goes, as failure emails show it."""
    if action.kind == "call_api":
        return mask_url(action.url)
    return actions.ACTION_TITLES.get(action.kind, action.kind) + " step"


def _check_auto_pause(automation, delivery, now):
    """Warn, then pause, an automation whose attempts have failed for long."""
    config = current_app.config
    if automation.failing_since is None:
        automation.failing_since = now
        return

    failing_for = (now - automation.failing_since).total_seconds()
    since = automation.failing_since.strftime("%Y-%m-%d %H:%M UTC")
    if failing_for >= config["AUTO_PAUSE_SECONDS"] and automation.active:
        reason = f"every attempt failed since {since}"
        pause_automation(automation, reason)
        _notice(automation, delivery, now, "paused", f"paused because {reason}")
    elif (
        failing_for >= config["AUTO_PAUSE_WARNING_SECONDS"]
        and automation.pause_warning_sent_at is None
    ):
        automation.pause_warning_sent_at = now
        pause_in = config["AUTO_PAUSE_SECONDS"] - failing_for
        _notice(
            automation,
            delivery,
            now,
            "pause_warning",
            f"every attempt failed since {since}; the automation will be paused "
            f"in about {pause_in / 3600:.0f} hours unless a delivery succeeds",
        )


def _notice(automation, delivery, now, kind, error):
    address = failure_address(delivery)
    if address:
        notify.record_failure(
            account_id=automation.account_id,
            automation_id=automation.id,
            address=address,
            url_masked=_target(delivery.action),
            error=error,
            occurred_at=now,
            kind=kind,
        )


def _after_commit(delivery, outcome):
    # A retry is not queued here, because the sweep queues it once next_attempt_at
    # has come. So retries that are waiting take no room in Redis.
    address = failure_address(delivery)
    if not outcome.succeeded and address:
        queue.enqueue_notices(address)


def pause_automation(automation, reason):
    """Pause an automation in the current transaction; the caller commits."""
    automation.active = False
    automation.paused_at = utcnow()
    automation.pause_reason = reason[:300]
    log.warning("automation %s paused: %s", automation.id, reason)


def resume_automation(automation):
    """Resume an automation, commit, and queue the deliveries held while paused."""
    automation.active = True
    automation.paused_at = None
    automation.pause_reason = ""
    # The period of unbroken failure starts again, so the first failure after
    # a resume does not pause the automation again without a warning.
    automation.failing_since = None
    automation.pause_warning_sent_at = None
    held = db.session.scalars(
        db.select(Delivery.id).where(
            Delivery.automation_id == automation.id,
            Delivery.state == "pending",
            Delivery.next_attempt_at.is_(None),
        )
    ).all()
    now = utcnow()
    db.session.execute(update(Delivery).where(Delivery.id.in_(held)).values(next_attempt_at=now))
    db.session.commit()
    for delivery_id in held:
        queue.enqueue_delivery(delivery_id)
    return len(held)


def sweep(now=None, grace_seconds=30):
    """Queue due retries and the work that a lost job or a dead worker left behind.

    Events and deliveries are queued unless their job is already waiting, so
    the sweep may run at any time. Failure emails are queued only for notices
    older than `grace_seconds`, because their jobs are not de-duplicated.
    Returns counts of the expired leases and of what it queued, for logs and tests.
    """
    now = now or utcnow()
    grace = timedelta(seconds=grace_seconds)

    expired = db.session.execute(
        update(Delivery)
        .where(Delivery.state == "sending", Delivery.lease_expires_at < now)
        .values(state="pending", next_attempt_at=now, lease_expires_at=None)
    ).rowcount
    db.session.commit()
    if expired:
        log.warning("sweep took back %d deliveries whose lease expired", expired)

    waiting = db.session.execute(
        db.select(Event.id, Event.occurred_at)
        .where(Event.dispatched_at.is_(None), Event.occurred_at <= now)
        .order_by(Event.id)
        .limit(SWEEP_BATCH_SIZE)
    ).all()
    if waiting:
        queue.request_dispatch()
    # An event that waits long gets a job of its own as well, so an event whose
    # dispatch fails cannot hold back the others.
    stuck_before = now - timedelta(seconds=STUCK_EVENT_SECONDS)
    queue.enqueue_event_dispatches(
        [event_id for event_id, occurred_at in waiting if occurred_at <= stuck_before]
    )
    events_queued = len(waiting)

    due_ids = db.session.scalars(
        db.select(Delivery.id)
        .where(
            Delivery.state == "pending",
            Delivery.next_attempt_at <= now,
        )
        .order_by(Delivery.next_attempt_at)
        .limit(SWEEP_BATCH_SIZE)
    ).all()
    deliveries_queued = queue.enqueue_deliveries(due_ids)

    addresses = db.session.scalars(
        db.select(FailureNotice.address)
        .where(FailureNotice.state == "pending", FailureNotice.occurred_at < now - grace)
        .distinct()
        .limit(SWEEP_BATCH_SIZE)
    ).all()
    addresses = [address for address in addresses if not queue.notices_scheduled(address)]
    for address in addresses:
        queue.enqueue_notices(address)

    counts = {
        "leases_expired": expired,
        "events": events_queued,
        "deliveries": deliveries_queued,
        "notice_addresses": len(addresses),
    }
    if any(counts.values()):
        log.info("sweep queued %s", counts)
    return counts


def automation_for_account(account_id, automation_id):
    return db.session.scalar(
        db.select(Automation).where(
            Automation.id == automation_id, Automation.account_id == account_id
        )
    )
