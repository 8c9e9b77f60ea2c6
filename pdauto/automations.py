"""Saving, pausing, deleting and redelivering automations: the domain side of the builder."""

import logging

from . import deliveries, proofs, queue
from .extensions import db
from .models import Action, Automation, Delivery, utcnow
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
    fingerprint = proofs.request_fingerprint(url, data["content_type"], {})
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
    action.url = url
    action.content_type = data["content_type"]
    action.failure_email = data["failure_email"]
    db.session.commit()
    log.info("automation %s saved in account %s", automation.id, account_id)
    return automation


def pause(automation):
    deliveries.pause_automation(automation, "paused by a user")
    db.session.commit()


def resume(automation):
    return deliveries.resume_automation(automation)


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


def get_delivery(account_id, delivery_id):
    return db.session.scalar(
        db.select(Delivery).where(
            Delivery.id == delivery_id, Delivery.account_id == account_id
        )
    )
