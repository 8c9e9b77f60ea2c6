"""RQ entry points. Each takes ids, runs in the app context, and raises on failure."""

import logging

from flask import current_app

from . import deliveries, notify, queue
from .extensions import db

log = logging.getLogger(__name__)


def get_sender():
    """Return this process's webhook sender, which keeps connections open per host."""
    app = current_app._get_current_object()
    sender = app.extensions.get("pdauto_sender")
    if sender is None:
        sender = make_sender()
        app.extensions["pdauto_sender"] = sender
    return sender


def make_sender():
    """Return a new webhook sender with the app's address policy and timeouts."""
    from .webhooks import AddressPolicy, Sender

    config = current_app.config
    return Sender(
        AddressPolicy.from_strings(config["PDAUTO_ALLOWED_NETWORKS"]),
        connect_timeout=config["DELIVERY_CONNECT_TIMEOUT_SECONDS"],
        total_timeout=config["DELIVERY_TIMEOUT_SECONDS"],
    )


def dispatch_waiting():
    """Dispatch the events waiting to be dispatched, a batch at a time, and send them."""
    queue.clear_dispatch_flag()
    return dispatch_batch(get_sender())


def dispatch_batch(sender):
    """Dispatch up to a batch of waiting events and send their first attempts.

    When the batch is full, another dispatch is requested first, so a second
    worker can take the next batch while this one sends.
    """
    batch = current_app.config["DISPATCH_BATCH_EVENTS"]
    try:
        firsts, event_count = deliveries.claim_waiting(batch)
    except Exception:
        # One event that cannot be dispatched must not hold back the batch, so
        # each event gets a job of its own, and only that event's job fails.
        db.session.rollback()
        log.exception("dispatching a batch of events failed; dispatching them one by one")
        queue.enqueue_event_dispatches(deliveries.waiting_event_ids(batch))
        return 0
    if event_count == batch:
        queue.request_dispatch()
    _send_first_attempts(firsts, sender)
    return len(firsts)


def dispatch_event(event_id):
    """Create one event's deliveries and send their first attempts, in order."""
    firsts = deliveries.claim_event(event_id)
    _send_first_attempts(firsts, get_sender())
    return len(firsts)


def _send_first_attempts(firsts, sender):
    """Send first attempts in this job, which saves RQ's cost of a job per delivery.

    The successes are written in bulk. A delivery left over when the time budget
    is spent gets a job of its own.
    """
    if not firsts:
        return
    config = current_app.config
    # The budget stays well inside the lease, so no sweep takes a delivery back
    # while this job may still send it.
    budget = min(config["DISPATCH_SEND_BUDGET_SECONDS"], config["DELIVERY_LEASE_SECONDS"] / 3)
    deliveries.send_claimed(firsts, sender, budget)


def deliver(delivery_id):
    """Send one attempt of a delivery."""
    return deliveries.attempt_delivery(delivery_id, get_sender())


def send_failure_notices(address):
    """Send, or hold back under the limit, the failure emails of one address."""
    return notify.send_pending_notices(address)


def sweep():
    return deliveries.sweep()
