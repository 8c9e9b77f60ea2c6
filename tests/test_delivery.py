"""Matching changes become POSTs delivered by an RQ worker, each attempt recorded."""

import pytest

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import Attempt, Automation, Delivery, FailureNotice
from tests.conftest import run_jobs
from tests.factories import make_automation

RECORD_FIELDS = {
    "person": {"first_name": "Ada", "last_name": "Lovelace"},
    "company": {"name": "Initech"},
    "deal": {"name": "Big deal", "value": 12000, "status": "open"},
}
UPDATED_FIELDS = {
    "person": {"last_name": "King"},
    "company": {"name": "Initrode"},
    "deal": {"status": "won"},
}


def change(model, action, account_id):
    """Create a record, then update or delete it if asked; return its id."""
    record = crm.create_record(model, account_id, dict(RECORD_FIELDS[model]))
    record_id = record.id
    if action == "updated":
        crm.update_record(record, UPDATED_FIELDS[model])
    elif action == "deleted":
        crm.delete_record(record)
    return record_id


@pytest.mark.parametrize("model", ["person", "company", "deal"])
@pytest.mark.parametrize("action", ["created", "updated", "deleted"])
def test_four_fields_arrive(app, users, receiver, model, action):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(
            account_id,
            receiver.url("/hook"),
            name=f"{model} {action} hook",
            event_model=model,
            event_action=action,
        )
        record_id = change(model, action, account_id)

    run_jobs(app)

    [request] = receiver.wait_for_requests(1)
    body = request.json()
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert body["trigger"] == f"{model} {action} hook"
    assert body["event_model"] == model
    assert body["event_action"] == action
    assert body["event_model_id"] == record_id
    assert type(body["event_model_id"]) is int
    assert isinstance(body["event_id"], int)
    assert body["occurred_at"].endswith("Z")
    assert request.headers["webhook-id"].startswith("msg_")
    assert "test" not in body


def test_updated_body_has_changes(app, users, receiver):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"), event_action="updated")
        change("deal", "updated", account_id)

    run_jobs(app)

    [request] = receiver.wait_for_requests(1)
    assert request.json()["changes"] == {"status": ["open", "won"]}


def test_attempt_recorded_and_shown(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=202, body="queued")
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
        change("deal", "created", account_id)

    run_jobs(app)

    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        [attempt] = delivery.attempts
        assert delivery.state == "succeeded"
        assert attempt.response_status == 202
        assert attempt.succeeded
        assert attempt.duration_ms > 0
        assert attempt.error == ""
        delivery_id = delivery.id
    page = manager_client.get(f"/automations/{automation_id}")
    assert delivery_id in page.text
    assert "202" in page.text
    assert "queued" in page.text


def test_non_matching_change_not_delivered(app, users, receiver):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/deal"), event_model="deal")
        make_automation(account_id, receiver.url("/updated"), event_action="updated")
        change("person", "created", account_id)

    run_jobs(app)

    assert receiver.requests == []


def test_other_account_change_not_delivered(app, users, receiver):
    with app.app_context():
        make_automation(users["manager"][2], receiver.url("/hook"))
        change("deal", "created", users["other"][2])

    run_jobs(app)

    assert receiver.requests == []


@pytest.mark.parametrize("state", ["paused", "deleted"])
def test_paused_or_deleted_automation_not_delivered(app, users, receiver, state):
    from pdauto import automations

    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        if state == "paused":
            automations.pause(automation)
        else:
            automations.delete(automation)
        change("deal", "created", account_id)

    run_jobs(app)

    assert receiver.requests == []
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Delivery.id))) == 0


def test_paused_after_dispatch_holds_then_resumes(app, users, receiver):
    from pdauto import automations

    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        automation_id = automation.id
        change("deal", "created", account_id)
        # Create and queue the delivery now, so it waits in the queue during the pause.
        from pdauto import deliveries, queue
        from pdauto.models import Event

        queue.enqueue_deliveries(deliveries.dispatch_event(db.session.scalar(db.select(Event.id))))
        automations.pause(db.session.get(Automation, automation_id))

    run_jobs(app)
    assert receiver.requests == []

    with app.app_context():
        held, replayed = automations.resume(db.session.get(Automation, automation_id))
        assert held == 1
    run_jobs(app)
    assert len(receiver.wait_for_requests(1)) == 1


def test_resume_replays_missed_events(app, users, receiver):
    from pdauto import automations

    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        automations.pause(automation)
        change("deal", "created", account_id)
        change("deal", "created", account_id)
    run_jobs(app)
    assert receiver.requests == []

    with app.app_context():
        automation = db.session.scalar(db.select(Automation))
        assert automations.missed_event_count(automation) == 2
        held, replayed = automations.resume(automation, replay=True)
        assert replayed == 2
    run_jobs(app)

    assert len(receiver.wait_for_requests(2)) == 2


def test_failed_attempt_schedules_retry_and_emails(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500, body="database exploded")
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"), name="Ping CRM sync")
        change("deal", "created", account_id)

    run_jobs(app)

    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        assert delivery.state == "pending"
        assert delivery.attempt_count == 1
        assert delivery.next_attempt_at > delivery.created_at
        attempt = db.session.scalar(db.select(Attempt))
        assert attempt.response_status == 500
        assert not attempt.succeeded
        assert "500" in attempt.error
    [message] = smtp_server.messages
    assert message.rcpt_tos == ["ops@example.com"]
    assert "Ping CRM sync" in message.subject
    assert receiver.url("/hook") in message.text
    assert "500" in message.text


def test_redirect_is_failure_not_followed(app, users, receiver):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=302, headers={"Location": receiver.url("/elsewhere")})
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        change("deal", "created", account_id)

    run_jobs(app)

    assert [request.path for request in receiver.requests] == ["/hook"]
    with app.app_context():
        attempt = db.session.scalar(db.select(Attempt))
        assert not attempt.succeeded
        assert receiver.url("/elsewhere") in attempt.error


def test_connection_refused_recorded(app, users, smtp_server):
    from tests.support.redis_server import free_port

    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, f"http://127.0.0.1:{free_port()}/hook")
        change("deal", "created", account_id)

    run_jobs(app)

    with app.app_context():
        attempt = db.session.scalar(db.select(Attempt))
        assert attempt.outcome == "connection_refused"
        assert "refused" in attempt.error
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("status", [201, 202, 204])
def test_empty_2xx_succeeds_without_retry_or_email(app, users, receiver, smtp_server, status):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=status)
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        change("deal", "created", account_id)

    run_jobs(app)

    receiver.wait_for_requests(1)
    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        assert delivery.state == "succeeded"
        assert delivery.next_attempt_at is None or delivery.completed_at is not None
        assert delivery.attempt_count == 1
        assert db.session.scalar(db.select(db.func.count(FailureNotice.id))) == 0
    assert len(receiver.requests) == 1
    assert smtp_server.messages == []
