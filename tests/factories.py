"""Rows for tests, made without going through the builder's Test Now step."""

from pdauto.extensions import db
from pdauto.models import Action, Automation


def make_automation(
    account_id,
    url,
    name="Deal won",
    event_model="deal",
    event_action="created",
    failure_email="ops@example.com",
    **action_fields,
):
    """Create an active automation with one Call API action; call in an app context."""
    automation = Automation(
        account_id=account_id,
        name=name,
        event_model=event_model,
        event_action=event_action,
    )
    automation.actions.append(
        Action(kind="call_api", url=url, failure_email=failure_email, **action_fields)
    )
    db.session.add(automation)
    db.session.commit()
    return automation
