"""Saving, pausing, deleting and redelivering automations: the domain side of the builder."""

import logging
from datetime import timedelta

from sqlalchemy import update

from . import conditions, deliveries, proofs, queue
from .extensions import db
from .models import Action, Automation, Delivery, Event, new_signing_secret, utcnow
from .webhooks import mask_url

log = logging.getLogger(__name__)


def call_api_action(automation):
    """Return the automation's first Call API action, or None."""
    for action in automation.actions:
        if action.kind == "call_api":
            return action
    return None


def resolve_url(submitted, action):
    """Return the URL to use: the saved one when the form shows it masked.

    The builder shows saved credentials masked, so submitting the masked text
    unchanged means "keep the saved URL".
    """
    if action is not None and action.url and submitted == mask_url(action.url):
        return action.url
    return submitted


def action_fingerprint(action):
    return proofs.request_fingerprint(action.url, action.content_type, action.custom_headers)


def save_automation(account_id, data, automation=None, proof=None):
    """Create or update an automation and its Call API action, then commit.

    Raises proofs.InvalidProof unless the request settings are unchanged from
    the saved ones or `proof` shows a 2xx test of exactly these settings.
    """
    action = call_api_action(automation) if automation else None
    url = resolve_url(data["url"], action)
    headers = data.get("custom_headers_parsed") or {}
    fingerprint = proofs.request_fingerprint(url, data["content_type"], headers)
    unchanged = action is not None and fingerprint == action_fingerprint(action)
    if not unchanged:
        proofs.check_proof(proof, account_id, fingerprint)

    if automation is None:
        automation = Automation(account_id=account_id)
        db.session.add(automation)
    if action is None:
        action = Action(kind="call_api", position=0)
        if data.get("signing_secret"):
            action.signing_secret = data["signing_secret"]
        automation.actions.append(action)

    automation.name = data["name"]
    automation.event_model = data["event_model"]
    automation.event_action = data["event_action"]
    if "conditions" in data:
        automation.conditions = data["conditions"]
    action.url = url
    action.content_type = data["content_type"]
    action.custom_headers = headers
    action.failure_email = data["failure_email"]
    db.session.commit()
    log.info("automation %s saved in account %s", automation.id, account_id)
    return automation


def rotate_secret(action, grace_seconds):
    """Start signing with a new secret; the old one is also sent for `grace_seconds`."""
    action.previous_signing_secret = action.signing_secret
    action.previous_secret_expires_at = utcnow() + timedelta(seconds=grace_seconds)
    action.signing_secret = new_signing_secret()
    db.session.commit()
    log.info("action %s: signing secret rotated", action.id)


def pause(automation):
    deliveries.pause_automation(automation, "paused by a user")
    db.session.commit()


def resume(automation, replay=False):
    """Resume an automation; with `replay`, deliver the events it missed while paused.

    Returns (held deliveries queued, missed events replayed).
    """
    paused_at = automation.paused_at
    held = deliveries.resume_automation(automation)
    replayed = 0
    if replay and paused_at is not None:
        replayed = replay_events(automation, paused_at)
    return held, replayed


def missed_event_count(automation):
    """Count the matching events that happened while the automation was paused."""
    if automation.paused_at is None:
        return 0
    if automation.conditions:
        return len(_missed_events(automation, automation.paused_at))
    return db.session.scalar(
        db.select(db.func.count(Event.id)).where(
            *_missed_events_filter(automation, automation.paused_at)
        )
    )


def _missed_events(automation, since, exclude=None):
    """Return the ids of events since `since` that the automation's trigger and conditions fit."""
    query = db.select(Event).where(*_missed_events_filter(automation, since)).order_by(Event.id)
    if exclude is not None:
        query = query.where(Event.id.not_in(exclude))
    return [
        event.id
        for event in db.session.scalars(query)
        if conditions.conditions_match(automation.conditions, event)
    ]


def _missed_events_filter(automation, since):
    return (
        Event.account_id == automation.account_id,
        Event.model == automation.event_model,
        Event.action == automation.event_action,
        Event.occurred_at >= since,
    )


def replay_events(automation, since):
    """Create and queue deliveries for matching events since `since` that have none."""
    action = call_api_action(automation)
    if action is None:
        return 0
    delivered = db.select(Delivery.event_id).where(Delivery.action_id == action.id)
    event_ids = _missed_events(automation, since, exclude=delivered)
    now = utcnow()
    rows = [
        Delivery(
            account_id=automation.account_id,
            event_id=event_id,
            action_id=action.id,
            automation_id=automation.id,
            next_attempt_at=now,
        )
        for event_id in event_ids
    ]
    db.session.add_all(rows)
    db.session.commit()
    for row in rows:
        queue.enqueue_delivery(row.id)
    log.info("automation %s replayed %d events since %s", automation.id, len(rows), since)
    return len(rows)


def delete(automation):
    """Mark an automation deleted; its delivery history stays readable."""
    automation.deleted_at = utcnow()
    automation.active = False
    db.session.commit()
    log.info("automation %s deleted", automation.id)


def redeliver(delivery):
    """Queue one more attempt of a delivery, whatever its state, and commit."""
    delivery.state = "pending"
    delivery.next_attempt_at = utcnow()
    delivery.completed_at = None
    db.session.commit()
    queue.enqueue_delivery(delivery.id)
    log.info("delivery %s queued for redelivery", delivery.id)


def redeliver_failed_since(automation, since):
    """Queue one more attempt of every failed delivery created since `since`."""
    failed_ids = db.session.scalars(
        db.select(Delivery.id).where(
            Delivery.automation_id == automation.id,
            Delivery.state == "failed",
            Delivery.created_at >= since,
        )
    ).all()
    if failed_ids:
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(failed_ids))
            .values(state="pending", next_attempt_at=utcnow(), completed_at=None)
        )
        db.session.commit()
    for delivery_id in failed_ids:
        queue.enqueue_delivery(delivery_id)
    log.info(
        "automation %s: %d failed deliveries queued again",
        automation.id,
        len(failed_ids),
    )
    return len(failed_ids)


def get_delivery(account_id, delivery_id):
    return db.session.scalar(
        db.select(Delivery).where(Delivery.id == delivery_id, Delivery.account_id == account_id)
    )
