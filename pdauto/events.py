"""Recording CRM changes in the outbox, and matching them to automations."""

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy.orm import selectinload

from . import conditions
from .extensions import db
from .models import Automation, Event, utcnow


def _json_value(value):
    if isinstance(value, Decimal):
        # Whole amounts stay integers so that receivers see 12000, not "12000.00".
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def snapshot(record):
    """Return the tracked fields of a record as JSON-ready values."""
    return {name: _json_value(getattr(record, name)) for name in record.tracked_fields}


def diff(before, after):
    """Return {field: [old, new]} for the fields whose value changed."""
    names = list(after) + [name for name in before if name not in after]
    return {
        name: [before.get(name), after.get(name)]
        for name in names
        if before.get(name) != after.get(name)
    }


def record_change(record, action, changes=None):
    """Add the Event for a change to the current transaction and return it.

    The caller commits the change and the event together, so an event exists
    exactly when its change does.
    """
    event = Event(
        account_id=record.account_id,
        model=record.event_model,
        action=action,
        record_id=record.id,
        changes=changes or {},
        record=snapshot(record),
        occurred_at=utcnow(),
    )
    db.session.add(event)
    return event


def matching_automations(event):
    """Return the active automations of the event's account whose trigger and conditions fit it."""
    return matching(triggered_automations(event.account_id, event.model, event.action), event)


def triggered_automations(account_id, model, action):
    """Return the active automations of an account with this trigger, their steps loaded."""
    return db.session.scalars(
        db.select(Automation)
        .where(
            Automation.account_id == account_id,
            Automation.event_model == model,
            Automation.event_action == action,
            Automation.active.is_(True),
            Automation.deleted_at.is_(None),
        )
        .options(selectinload(Automation.actions))
        .order_by(Automation.id)
    ).all()


def matching(automations, event):
    """Return the automations among `automations` whose conditions fit the event."""
    return [
        automation
        for automation in automations
        if conditions.conditions_match(automation.conditions, event)
    ]
