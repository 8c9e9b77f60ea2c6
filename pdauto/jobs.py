"""RQ entry points. Each takes ids, runs in the app context, and raises on failure."""

import logging

from flask import current_app

from . import deliveries, notify

log = logging.getLogger(__name__)


def get_sender():
    """Return this process's webhook sender, which keeps connections open per host."""
    from .webhooks import AddressPolicy, Sender

    app = current_app._get_current_object()
    sender = app.extensions.get("pdauto_sender")
    if sender is None:
        sender = Sender(
            AddressPolicy.from_strings(app.config["PDAUTO_ALLOWED_NETWORKS"]),
            connect_timeout=app.config["DELIVERY_CONNECT_TIMEOUT_SECONDS"],
            total_timeout=app.config["DELIVERY_TIMEOUT_SECONDS"],
        )
        app.extensions["pdauto_sender"] = sender
    return sender


def dispatch_event(event_id):
    """Create an event's deliveries and send their first attempts, in order.

    Sending here, not from one job per delivery, saves RQ's cost per job and lets
    the successes be written in bulk. A delivery left over when the time budget
    is spent gets a job of its own.
    """
    delivery_ids = deliveries.dispatch_event(event_id, claim=True)
    if delivery_ids:
        config = current_app.config
        # The budget stays well inside the lease, so no sweep takes a delivery
        # back while this job may still send it.
        budget = min(config["DISPATCH_SEND_BUDGET_SECONDS"], config["DELIVERY_LEASE_SECONDS"] / 3)
        deliveries.send_claimed(delivery_ids, get_sender(), budget)
    return len(delivery_ids)


def deliver(delivery_id):
    """Send one attempt of a delivery."""
    return deliveries.attempt_delivery(delivery_id, get_sender())


def send_failure_notices(address):
    """Send, or hold back under the limit, the failure emails of one address."""
    return notify.send_pending_notices(address)


def sweep():
    return deliveries.sweep()
