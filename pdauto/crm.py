"""Changes to people, companies and deals, each committed with its Event."""

from . import events, queue
from .extensions import db
from .models import RECORD_CLASSES


def _commit_and_dispatch(event):
    # The id is read before the commit, which expires the event, so reading it
    # afterwards would cost a SELECT.
    db.session.flush()
    event_id = event.id
    db.session.commit()
    queue.enqueue_dispatch(event_id)


def create_record(model, account_id, fields):
    """Create a record of `model` with `fields`, record its Event, commit, queue it."""
    record = RECORD_CLASSES[model](account_id=account_id, **fields)
    db.session.add(record)
    db.session.flush()
    event = events.record_change(record, "created", events.diff({}, events.snapshot(record)))
    _commit_and_dispatch(event)
    return record


def update_record(record, fields):
    """Apply `fields` to a record; a change that alters nothing records no Event."""
    before = events.snapshot(record)
    for name, value in fields.items():
        setattr(record, name, value)
    db.session.flush()
    changes = events.diff(before, events.snapshot(record))
    if not changes:
        db.session.rollback()
        return None

    event = events.record_change(record, "updated", changes)
    _commit_and_dispatch(event)
    return event


def delete_record(record):
    before = events.snapshot(record)
    event = events.record_change(record, "deleted", events.diff(before, {}))
    db.session.delete(record)
    _commit_and_dispatch(event)
    return event


def get_record(model, account_id, record_id):
    """Return the account's record, or None; another account's id is not found."""
    record_class = RECORD_CLASSES[model]
    return db.session.scalar(
        db.select(record_class).where(
            record_class.id == record_id, record_class.account_id == account_id
        )
    )
