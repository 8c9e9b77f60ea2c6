"""Saving, pausing, deleting and redelivering automations: the domain side of the builder."""

import copy
import logging
from datetime import timedelta

from sqlalchemy import update

from . import actions, conditions, deliveries, proofs, queue
from .extensions import db
from .models import Action, Automation, Delivery, Event, new_signing_secret, utcnow
from .webhooks import mask_url

log = logging.getLogger(__name__)

# Steps an automation may run after its Call API action.
MAX_STEPS = 10
STEP_KINDS = ("send_email", "create_task")


class InvalidSteps(ValueError):
    """Steps that cannot be saved. `errors` maps each invalid step's index to its message."""

    def __init__(self, errors):
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def call_api_action(automation):
    """Return the automation's first Call API action, or None."""
    for action in automation.actions:
        if action.kind == "call_api":
            return action
    return None


def current_actions(automation):
    """Return the actions that the automation runs, in order, leaving out removed steps."""
    return [action for action in automation.actions if action.removed_at is None]


def further_steps(automation):
    """Return the Send email and Create task steps that run after the Call API action."""
    return [action for action in current_actions(automation) if action.kind != "call_api"]


def clean_steps(account_id, event_model, steps, automation=None):
    """Return the steps with their settings cleaned, or raise InvalidSteps.

    Each step is a dict of kind, settings and id: the id of a step of
    `automation` that the form kept, or None for a new step. Every step is
    checked, so InvalidSteps carries a message for each invalid one.
    """
    saved_steps = {step.id: step for step in further_steps(automation)} if automation else {}
    seen_ids = set()
    cleaned = []
    errors = {}
    for index, step in enumerate(steps):
        number = index + 1
        if index >= MAX_STEPS:
            errors[index] = f"Use at most {MAX_STEPS} further steps; remove step {number}."
            continue
        action_id = step.get("id")
        if action_id is not None:
            saved = saved_steps.get(action_id)
            if saved is None or saved.kind != step.get("kind") or action_id in seen_ids:
                errors[index] = (
                    f"Step {number} is no longer part of this automation; "
                    "remove it and add it again."
                )
                continue
            seen_ids.add(action_id)
        if step.get("kind") not in STEP_KINDS:
            errors[index] = f"Step {number}: choose Send email or Create task."
            continue
        try:
            settings = actions.validate_settings(
                step["kind"], step.get("settings"), account_id, event_model
            )
        except actions.InvalidAction as error:
            errors[index] = f"Step {number}: {error}"
            continue
        cleaned.append({"id": action_id, "kind": step["kind"], "settings": settings})
    if errors:
        raise InvalidSteps(errors)
    return cleaned


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
    """Create or update an automation and its actions, then commit.

    `data["steps"]`, when present, holds the steps after the Call API action
    as clean_steps returns them, in the order they run. Raises
    proofs.InvalidProof, before anything is changed, unless the request
    settings are unchanged from the saved ones or `proof` shows a 2xx test of
    exactly these settings.
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
    if "steps" in data:
        _apply_steps(automation, data["steps"])
    db.session.commit()
    log.info("automation %s saved in account %s", automation.id, account_id)
    return automation


def _apply_steps(automation, steps):
    """Update, add and remove the steps after the Call API action, in the session."""
    unmatched = {action.id: action for action in further_steps(automation)}
    for position, step in enumerate(steps, start=1):
        action = unmatched.pop(step["id"], None) if step["id"] is not None else None
        if action is None:
            action = Action(kind=step["kind"])
            automation.actions.append(action)
        action.position = position
        action.settings = step["settings"]
    now = utcnow()
    for action in unmatched.values():
        # The step is marked removed, not deleted, because its deliveries refer
        # to it and a worker may be creating one for it at this moment.
        action.removed_at = now


def duplicate(automation):
    """Copy an automation with its trigger, conditions and steps, paused, and commit.

    The copy's Call API action gets a new signing secret, so receivers can tell
    the two automations apart. Returns the copy.
    """
    name = automation.name
    copy_ = Automation(
        account_id=automation.account_id,
        name=("Copy of " + name)[: Automation.name.type.length],
        event_model=automation.event_model,
        event_action=automation.event_action,
        conditions=copy.deepcopy(automation.conditions or []),
    )
    for position, action in enumerate(current_actions(automation)):
        copy_.actions.append(
            Action(
                kind=action.kind,
                position=position,
                url=action.url,
                failure_email=action.failure_email,
                content_type=action.content_type,
                custom_headers=copy.deepcopy(action.custom_headers or {}),
                settings=copy.deepcopy(action.settings or {}),
                signing_secret=new_signing_secret(),
            )
        )
    db.session.add(copy_)
    db.session.flush()
    deliveries.pause_automation(copy_, f"a copy of {name}; resume it to start")
    db.session.commit()
    log.info("automation %s duplicated as %s", automation.id, copy_.id)
    return copy_


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
    """Create and queue deliveries of every current step for matching events since `since`.

    A step that already has a delivery for an event is not run again for it.
    Returns the number of events replayed.
    """
    actions = current_actions(automation)
    if not actions:
        return 0
    action_ids = [action.id for action in actions]
    done = {
        (event_id, action_id)
        for event_id, action_id in db.session.execute(
            db.select(Delivery.event_id, Delivery.action_id).where(
                Delivery.action_id.in_(action_ids)
            )
        )
    }
    event_ids = _missed_events(automation, since)
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
        for action in actions
        if (event_id, action.id) not in done
    ]
    db.session.add_all(rows)
    db.session.commit()
    queue.enqueue_deliveries([row.id for row in rows])
    replayed = len({row.event_id for row in rows})
    log.info("automation %s replayed %d events since %s", automation.id, replayed, since)
    return replayed


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
