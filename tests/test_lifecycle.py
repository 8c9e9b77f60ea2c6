"""Auto-pause, 410 Gone, secret rotation, the delivery log and redelivery, end to end.

Each test runs the app, an RQ worker in this process, a loopback receiver and
the test SMTP server. Time passes by moving timestamps in the database, not by
sleeping.
"""

import html
import re
from datetime import timedelta

import pytest
import standardwebhooks

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import Action, Automation, Delivery, Event, utcnow
from pdauto.views.automations import PAGE_SIZE
from tests.conftest import run_jobs
from tests.factories import make_automation

AUTO_PAUSE = {"AUTO_PAUSE_WARNING_SECONDS": 60, "AUTO_PAUSE_SECONDS": 120}
# No retries: the first failed attempt leaves the delivery failed.
NO_RETRIES = {"DELIVERY_RETRY_SCHEDULE_SECONDS": ()}


def new_deal(account_id):
    """Create a deal, which fires a deal/created event; return the event id."""
    record = crm.create_record(
        "deal", account_id, {"name": "Big deal", "value": 1, "status": "open"}
    )
    return db.session.scalar(
        db.select(Event.id).where(Event.record_id == record.id).order_by(Event.id.desc())
    )


def deal_event(app, account_id):
    with app.app_context():
        return new_deal(account_id)


def get_automation(app, automation_id):
    with app.app_context():
        automation = db.session.get(Automation, automation_id)
        db.session.expunge(automation)
        return automation


def set_failing_since(app, automation_id, seconds_ago):
    with app.app_context():
        automation = db.session.get(Automation, automation_id)
        automation.failing_since = utcnow() - timedelta(seconds=seconds_ago)
        db.session.commit()


def delivery_ids(app, automation_id):
    with app.app_context():
        return db.session.scalars(
            db.select(Delivery.id)
            .where(Delivery.automation_id == automation_id)
            .order_by(Delivery.created_at, Delivery.id)
        ).all()


def webhook_headers(request):
    return {
        name: request.headers[name]
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    }


def verifies(secret, request):
    try:
        standardwebhooks.Webhook(secret).verify(request.body, webhook_headers(request))
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


# Auto-pause


@pytest.mark.parametrize("app_overrides", [AUTO_PAUSE])
def test_auto_pause_warns_then_pauses(app, users, receiver, smtp_server, manager_client):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500, body="down")
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook"), name="Sync deals").id

    deal_event(app, account_id)
    run_jobs(app)
    automation = get_automation(app, automation_id)
    assert automation.failing_since is not None
    assert automation.active
    assert len(smtp_server.wait_for(1)) == 1

    # Failing for longer than the warning period: one warning, still active.
    set_failing_since(app, automation_id, 90)
    deal_event(app, account_id)
    run_jobs(app)
    automation = get_automation(app, automation_id)
    assert automation.active
    assert automation.pause_warning_sent_at is not None
    warning = smtp_server.wait_for(2)[1]
    assert warning.rcpt_tos == ["ops@example.com"]
    assert "will be paused" in warning.text

    # Failing for longer than the pause period: paused, with a notice.
    set_failing_since(app, automation_id, 130)
    deal_event(app, account_id)
    run_jobs(app)
    automation = get_automation(app, automation_id)
    assert not automation.active
    assert "every attempt failed" in automation.pause_reason
    notice = smtp_server.wait_for(3)[2]
    assert notice.rcpt_tos == ["ops@example.com"]
    assert "paused because every attempt failed" in notice.text
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("app_overrides", [AUTO_PAUSE])
def test_success_resets_failing_since(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500)
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    set_failing_since(app, automation_id, 90)

    receiver.respond("/hook", status=200)
    deal_event(app, account_id)
    run_jobs(app)
    automation = get_automation(app, automation_id)
    assert automation.failing_since is None
    assert automation.pause_warning_sent_at is None

    receiver.respond("/hook", status=500)
    deal_event(app, account_id)
    run_jobs(app)
    automation = get_automation(app, automation_id)
    assert automation.active
    assert automation.pause_warning_sent_at is None
    assert utcnow() - automation.failing_since < timedelta(seconds=30)
    messages = smtp_server.wait_for(2)
    assert all("will be paused" not in message.text for message in messages)


@pytest.mark.parametrize("app_overrides", [AUTO_PAUSE])
def test_paused_events_kept_and_replayed(app, users, receiver, smtp_server, manager_client):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500)
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    set_failing_since(app, automation_id, 130)
    deal_event(app, account_id)
    run_jobs(app)
    assert not get_automation(app, automation_id).active
    assert len(receiver.requests) == 2

    missed = [deal_event(app, account_id), deal_event(app, account_id)]
    run_jobs(app)
    assert len(receiver.requests) == 2
    assert len(delivery_ids(app, automation_id)) == 2
    page = manager_client.get(f"/automations/{automation_id}")
    assert "Replay the 2 changes" in page.text

    receiver.respond("/hook", status=200)
    response = manager_client.post(f"/automations/{automation_id}/resume", data={"replay": "yes"})
    assert response.status_code == 302
    run_jobs(app)

    requests = receiver.wait_for_requests(4)
    assert sorted(request.json()["event_id"] for request in requests[2:]) == missed
    assert get_automation(app, automation_id).active


@pytest.mark.parametrize("app_overrides", [AUTO_PAUSE])
def test_resume_restarts_failure_clock(app, users, receiver, smtp_server, manager_client):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500)
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    set_failing_since(app, automation_id, 130)
    deal_event(app, account_id)
    run_jobs(app)
    assert not get_automation(app, automation_id).active

    manager_client.post(f"/automations/{automation_id}/resume")
    deal_event(app, account_id)
    run_jobs(app)

    # One failure right after a resume starts a new period; it does not pause at once.
    automation = get_automation(app, automation_id)
    assert automation.active
    assert utcnow() - automation.failing_since < timedelta(seconds=30)


# 410 Gone


def test_gone_pauses_and_emails(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=410, body="no such hook")
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook"), name="Old hook").id
    deal_event(app, account_id)
    run_jobs(app)

    automation = get_automation(app, automation_id)
    assert not automation.active
    assert "410" in automation.pause_reason
    with app.app_context():
        delivery = db.session.scalar(db.select(Delivery))
        assert delivery.state == "failed"
        assert delivery.next_attempt_at is None
    [message] = smtp_server.wait_for(1)
    assert message.rcpt_tos == ["ops@example.com"]
    assert "gone" in message.subject.lower()
    assert "Old hook" in message.subject

    deal_event(app, account_id)
    run_jobs(app)
    assert len(receiver.requests) == 1


# Secret rotation


def test_secret_rotation_signatures(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        automation_id = automation.id
        old_secret = automation.actions[0].signing_secret
    assert old_secret.startswith("whsec_")

    deal_event(app, account_id)
    run_jobs(app)
    before = receiver.wait_for_requests(1)[0]
    assert verifies(old_secret, before)

    response = manager_client.post(f"/automations/{automation_id}/rotate-secret")
    assert response.status_code == 302
    with app.app_context():
        action = db.session.scalar(db.select(Action).where(Action.automation_id == automation_id))
        new_secret = action.signing_secret
        assert action.previous_signing_secret == old_secret
        assert action.previous_secret_expires_at > utcnow() + timedelta(hours=23)
    assert new_secret != old_secret
    assert not verifies(new_secret, before)

    deal_event(app, account_id)
    run_jobs(app)
    during = receiver.wait_for_requests(2)[1]
    assert len(during.headers["webhook-signature"].split()) == 2
    assert verifies(old_secret, during)
    assert verifies(new_secret, during)

    with app.app_context():
        action = db.session.scalar(db.select(Action).where(Action.automation_id == automation_id))
        action.previous_secret_expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    deal_event(app, account_id)
    run_jobs(app)
    after = receiver.wait_for_requests(3)[2]
    assert len(after.headers["webhook-signature"].split()) == 1
    assert verifies(new_secret, after)
    assert not verifies(old_secret, after)


# Delivery log


def test_log_shows_attempts(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    receiver.respond(
        "/hook", status=503, body="overloaded, try later", headers={"X-Receiver": "hooks-7"}
    )
    with app.app_context():
        automation_id = make_automation(
            account_id, receiver.url("/hook"), custom_headers={"X-Team": "sales"}
        ).id
    event_id = deal_event(app, account_id)
    run_jobs(app)
    [delivery_id] = delivery_ids(app, automation_id)
    manager_client.post(f"/automations/deliveries/{delivery_id}/redeliver")
    run_jobs(app)
    receiver.wait_for_requests(2)

    page = manager_client.get(f"/automations/{automation_id}").text
    assert delivery_id in page
    assert "Attempt 1 at" in page
    assert "Attempt 2 at" in page
    assert re.search(r"503 in \d+ ms", page)
    # Request headers and body.
    assert f"webhook-id: {delivery_id}" in page
    assert "X-Team: sales" in page
    assert f"&#34;event_id&#34;:{event_id}," in page
    # Response headers, body and the error.
    assert "X-Receiver: hooks-7" in page
    assert "overloaded, try later" in page
    with app.app_context():
        error = db.session.scalar(db.select(Delivery.last_error))
    assert error
    assert "503" in error


def test_log_filter_by_state(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    receiver.respond("/hook", status=500)
    deal_event(app, account_id)
    run_jobs(app)
    succeeded_id, pending_id = delivery_ids(app, automation_id)

    page = manager_client.get(f"/automations/{automation_id}?state=succeeded").text
    assert succeeded_id in page
    assert pending_id not in page
    page = manager_client.get(f"/automations/{automation_id}?state=pending").text
    assert pending_id in page
    assert succeeded_id not in page
    page = manager_client.get(f"/automations/{automation_id}?state=failed").text
    assert succeeded_id not in page
    assert pending_id not in page
    page = manager_client.get(f"/automations/{automation_id}").text
    assert succeeded_id in page
    assert pending_id in page


def test_log_paginates(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
        for _ in range(PAGE_SIZE + 2):
            new_deal(account_id)
    run_jobs(app, rounds=10)
    receiver.wait_for_requests(PAGE_SIZE + 2)
    all_ids = set(delivery_ids(app, automation_id))
    assert len(all_ids) == PAGE_SIZE + 2

    first = manager_client.get(f"/automations/{automation_id}").text
    older_link = re.search(r'id="deliveries-older" href="([^"]+)"', first)
    assert older_link, "no Older link on the first page"
    second = manager_client.get(html.unescape(older_link.group(1))).text
    first_ids = set(re.findall(r'data-delivery-id="([^"]+)"', first))
    second_ids = set(re.findall(r'data-delivery-id="([^"]+)"', second))
    assert len(first_ids) == PAGE_SIZE
    assert len(second_ids) == 2
    assert first_ids | second_ids == all_ids
    assert 'id="deliveries-older"' in first
    assert 'id="deliveries-newer"' not in first
    assert 'id="deliveries-newer"' in second
    assert 'id="deliveries-older"' not in second
    assert f"{PAGE_SIZE + 2} deliveries" in second


def test_log_htmx_fragment(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    [delivery_id] = delivery_ids(app, automation_id)

    response = manager_client.get(
        f"/automations/{automation_id}?state=succeeded", headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    fragment = response.text.strip()
    assert fragment.startswith('<div id="deliveries"')
    assert "<html" not in fragment
    assert "Redeliver all failed since" not in fragment
    assert delivery_id in fragment
    assert "state=succeeded" in fragment
    assert "HX-Request" in response.headers.get("Vary", "")


# Redelivery


def test_redeliver_one_same_webhook_id(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    [delivery_id] = delivery_ids(app, automation_id)

    response = manager_client.post(f"/automations/deliveries/{delivery_id}/redeliver")
    assert response.status_code == 302
    run_jobs(app)

    first, second = receiver.wait_for_requests(2)
    assert first.headers["webhook-id"] == delivery_id
    assert second.headers["webhook-id"] == delivery_id
    assert first.json() == second.json()
    with app.app_context():
        delivery = db.session.get(Delivery, delivery_id)
        assert delivery.state == "succeeded"
        assert [attempt.number for attempt in delivery.attempts] == [1, 2]


def test_redeliver_unknown_delivery_404(app, users, manager_client):
    response = manager_client.post("/automations/deliveries/msg_nosuch/redeliver")
    assert response.status_code == 404


@pytest.mark.parametrize("app_overrides", [NO_RETRIES])
def test_redeliver_failed_since(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    receiver.respond("/hook", status=500)
    deal_event(app, account_id)
    deal_event(app, account_id)
    run_jobs(app)
    receiver.respond("/hook", status=200)
    deal_event(app, account_id)
    run_jobs(app)
    old_failed, new_failed, succeeded = delivery_ids(app, automation_id)
    with app.app_context():
        states = [
            db.session.get(Delivery, id_).state for id_ in (old_failed, new_failed, succeeded)
        ]
        assert states == ["failed", "failed", "succeeded"]
        db.session.get(Delivery, old_failed).created_at = utcnow() - timedelta(hours=3)
        db.session.commit()
    receiver.clear()

    since = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = manager_client.post(
        f"/automations/{automation_id}/redeliver-failed",
        data={"since": since},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert "1 failed deliveries since" in response.text
    run_jobs(app)

    [request] = receiver.wait_for_requests(1)
    assert request.headers["webhook-id"] == new_failed
    with app.app_context():
        assert db.session.get(Delivery, new_failed).state == "succeeded"
        assert db.session.get(Delivery, new_failed).attempt_count == 2
        assert db.session.get(Delivery, old_failed).state == "failed"
        assert db.session.get(Delivery, old_failed).attempt_count == 1
        assert db.session.get(Delivery, succeeded).attempt_count == 1


@pytest.mark.parametrize("since", ["", "yesterday", "2026-13-45T99:00"])
def test_redeliver_failed_invalid_since(app, users, receiver, manager_client, since):
    account_id = users["manager"][2]
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    response = manager_client.post(
        f"/automations/{automation_id}/redeliver-failed",
        data={"since": since},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert "Enter the date and time to redeliver from" in response.text


@pytest.mark.parametrize("app_overrides", [NO_RETRIES])
def test_redeliver_failed_since_with_offset(app, users, receiver, manager_client):
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500)
    with app.app_context():
        automation_id = make_automation(account_id, receiver.url("/hook")).id
    deal_event(app, account_id)
    run_jobs(app)
    [delivery_id] = delivery_ids(app, automation_id)
    receiver.respond("/hook", status=200)

    # Ten minutes ago, written in UTC+02:00.
    since = (utcnow() + timedelta(hours=2) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M+02:00")
    response = manager_client.post(
        f"/automations/{automation_id}/redeliver-failed",
        data={"since": since},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert "1 failed deliveries since" in response.text
    run_jobs(app)
    assert receiver.wait_for_requests(2)[1].headers["webhook-id"] == delivery_id
