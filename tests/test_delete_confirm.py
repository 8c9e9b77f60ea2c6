"""Confirmation pages shown before a record or an automation is deleted.

A GET of the delete URL shows what deleting does and changes nothing. A POST to
the same URL deletes.
"""

import re

import pytest

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import RECORD_CLASSES, Automation, Delivery, Event
from tests.conftest import login
from tests.factories import make_automation

RECORDS = {
    "people": ("person", {"first_name": "Ada", "last_name": "Lovelace"}, "Ada Lovelace"),
    "companies": ("company", {"name": "Initech"}, "Initech"),
    "deals": ("deal", {"name": "Big deal", "value": 5, "status": "open"}, "Big deal"),
}
HOOK_URL = "http://127.0.0.1:9/hook"


def text_of(response):
    """Return the page's HTML with each run of whitespace made one space."""
    return re.sub(r"\s+", " ", response.text)


def card_of(response):
    """Return the confirmation card's HTML, without the menu, as text_of does."""
    match = re.search(r'<section class="card narrow">(.*?)</section>', text_of(response))
    assert match, "no confirmation card in the page"
    return match.group(1)


def make_record(app, account_id, collection):
    model, fields, _ = RECORDS[collection]
    with app.app_context():
        return crm.create_record(model, account_id, dict(fields)).id


def record_exists(app, collection, record_id):
    model = RECORDS[collection][0]
    with app.app_context():
        return db.session.get(RECORD_CLASSES[model], record_id) is not None


def deleted_events(app):
    with app.app_context():
        return db.session.scalars(db.select(Event).where(Event.action == "deleted")).all()


def add_deliveries(automation, states):
    """Record one delivery in each of `states` for the automation's first step."""
    for state in states:
        event = Event(account_id=automation.account_id, model="deal", action="created", record_id=1)
        db.session.add(event)
        db.session.flush()
        db.session.add(
            Delivery(
                account_id=automation.account_id,
                event_id=event.id,
                action_id=automation.actions[0].id,
                automation_id=automation.id,
                state=state,
            )
        )
    db.session.commit()


# Records


@pytest.mark.parametrize("collection", list(RECORDS))
def test_record_confirm_page_deletes_nothing(app, users, manager_client, collection):
    record_id = make_record(app, users["manager"][2], collection)
    name = RECORDS[collection][2]
    url = f"/{collection}/{record_id}/delete"

    response = manager_client.get(url)

    assert response.status_code == 200
    page = text_of(response)
    assert f"<h1>Delete {name}?</h1>" in page
    assert f'method="post" action="{url}">' in page
    assert 'name="csrf_token"' in page
    assert '<button type="submit" class="danger">Delete</button>' in page
    assert f'<a href="/{collection}">Cancel</a>' in page
    assert record_exists(app, collection, record_id)
    assert deleted_events(app) == []


@pytest.mark.parametrize("collection", list(RECORDS))
def test_record_post_deletes(app, users, manager_client, collection):
    record_id = make_record(app, users["manager"][2], collection)
    name = RECORDS[collection][2]

    response = manager_client.post(f"/{collection}/{record_id}/delete", follow_redirects=True)

    assert response.status_code == 200
    assert response.request.path == f"/{collection}"
    assert f"Deleted {name}." in response.text
    assert not record_exists(app, collection, record_id)
    assert [event.record_id for event in deleted_events(app)] == [record_id]


def test_record_list_links_to_confirm_page(app, users, manager_client):
    record_id = make_record(app, users["manager"][2], "people")

    page = manager_client.get("/people").text

    assert f'<a class="danger" href="/people/{record_id}/delete">Delete</a>' in page
    assert 'method="post" action="/people/' not in page


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, "runs 1 active automation whose trigger is “person deleted”."),
        (2, "runs 2 active automations whose trigger is “person deleted”."),
    ],
)
def test_record_confirm_counts_automations(app, users, manager_client, count, expected):
    account_id = users["manager"][2]
    record_id = make_record(app, account_id, "people")
    with app.app_context():
        for number in range(count):
            make_automation(
                account_id,
                HOOK_URL,
                name=f"On delete {number}",
                event_model="person",
                event_action="deleted",
            )

    page = text_of(manager_client.get(f"/people/{record_id}/delete"))

    assert f"This removes the person for good and {expected}" in page


def test_record_confirm_without_automations(app, users, manager_client):
    record_id = make_record(app, users["manager"][2], "people")

    card = card_of(manager_client.get(f"/people/{record_id}/delete"))

    assert "<p>This removes the person for good.</p>" in card
    assert "automation" not in card


def test_record_confirm_counts_only_what_runs(app, users, manager_client):
    """Paused, deleted, other-trigger, other-account and unmatched automations do not count."""
    account_id = users["manager"][2]
    other_account_id = users["other"][2]
    record_id = make_record(app, account_id, "people")
    with app.app_context():
        make_automation(
            account_id, HOOK_URL, name="Runs", event_model="person", event_action="deleted"
        )
        paused = make_automation(
            account_id, HOOK_URL, name="Paused", event_model="person", event_action="deleted"
        )
        paused.active = False
        deleted = make_automation(
            account_id, HOOK_URL, name="Deleted", event_model="person", event_action="deleted"
        )
        deleted.active = False
        deleted.deleted_at = deleted.created_at
        unmatched = make_automation(
            account_id, HOOK_URL, name="Unmatched", event_model="person", event_action="deleted"
        )
        unmatched.conditions = [{"field": "first_name", "op": "equals", "value": "Grace"}]
        matched = make_automation(
            account_id, HOOK_URL, name="Matched", event_model="person", event_action="deleted"
        )
        matched.conditions = [{"field": "first_name", "op": "equals", "value": "Ada"}]
        db.session.commit()
        make_automation(
            account_id, HOOK_URL, name="Created", event_model="person", event_action="created"
        )
        make_automation(
            account_id, HOOK_URL, name="Deal", event_model="deal", event_action="deleted"
        )
        make_automation(
            other_account_id, HOOK_URL, name="Other", event_model="person", event_action="deleted"
        )

    page = text_of(manager_client.get(f"/people/{record_id}/delete"))

    assert "runs 2 active automations whose trigger is “person deleted”." in page


def test_record_confirm_other_account_not_found(app, users, manager_client):
    record_id = make_record(app, users["other"][2], "people")

    response = manager_client.get(f"/people/{record_id}/delete")

    assert response.status_code == 404
    assert "Ada Lovelace" not in response.text


def test_record_confirm_open_to_reps(app, users):
    record_id = make_record(app, users["manager"][2], "people")
    rep = app.test_client()
    login(rep, users["rep"][1])

    assert rep.get(f"/people/{record_id}/delete").status_code == 200


# Automations


def make_deal_automation(app, account_id, states=()):
    with app.app_context():
        automation = make_automation(account_id, HOOK_URL, name="Tell billing")
        add_deliveries(automation, states)
        return automation.id


def automation_deleted_at(app, automation_id):
    with app.app_context():
        return db.session.get(Automation, automation_id).deleted_at


def test_automation_confirm_page_deletes_nothing(app, users, manager_client):
    automation_id = make_deal_automation(app, users["manager"][2])
    url = f"/automations/{automation_id}/delete"

    response = manager_client.get(url)

    assert response.status_code == 200
    page = text_of(response)
    assert "<h1>Delete Tell billing?</h1>" in page
    assert "The automation stops running" in page
    assert "are not sent. Its delivery log stays readable." in page
    assert f'method="post" action="{url}">' in page
    assert 'name="csrf_token"' in page
    assert '<button type="submit" class="danger">Delete</button>' in page
    assert f'<a href="/automations/{automation_id}">Cancel</a>' in page
    assert "being sent now" not in page
    assert automation_deleted_at(app, automation_id) is None


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["pending"], "1 delivery is waiting, retrying or being sent now."),
        (
            ["pending", "sending", "succeeded", "failed"],
            "2 deliveries are waiting, retrying or being sent now.",
        ),
    ],
)
def test_automation_confirm_counts_unsent(app, users, manager_client, states, expected):
    automation_id = make_deal_automation(app, users["manager"][2], states)

    page = text_of(manager_client.get(f"/automations/{automation_id}/delete"))

    assert expected in page


def test_automation_post_deletes(app, users, manager_client):
    automation_id = make_deal_automation(app, users["manager"][2])

    response = manager_client.post(f"/automations/{automation_id}/delete", follow_redirects=True)

    assert response.status_code == 200
    assert response.request.path == "/automations/"
    assert "Deleted Tell billing. Its delivery log stays readable." in response.text
    assert automation_deleted_at(app, automation_id) is not None


def test_automation_page_links_to_confirm_page(app, users, manager_client):
    automation_id = make_deal_automation(app, users["manager"][2])

    page = manager_client.get(f"/automations/{automation_id}").text

    link = f'<a class="button danger" href="/automations/{automation_id}/delete">Delete</a>'
    assert link in page
    assert f'action="/automations/{automation_id}/delete"' not in page


def test_automation_confirm_forbidden_for_rep(app, users):
    automation_id = make_deal_automation(app, users["manager"][2])
    rep = app.test_client()
    login(rep, users["rep"][1])

    response = rep.get(f"/automations/{automation_id}/delete")

    assert response.status_code == 403
    assert "Tell billing" not in response.text


def test_automation_confirm_other_account_not_found(app, users, manager_client):
    automation_id = make_deal_automation(app, users["other"][2])

    response = manager_client.get(f"/automations/{automation_id}/delete")

    assert response.status_code == 404
    assert "Tell billing" not in response.text


def test_deleted_automation_confirm_not_found(app, users, manager_client):
    automation_id = make_deal_automation(app, users["manager"][2])
    manager_client.post(f"/automations/{automation_id}/delete")

    assert manager_client.get(f"/automations/{automation_id}/delete").status_code == 404


def test_confirm_pages_escape_names(app, users, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        person = crm.create_record("person", account_id, {"first_name": "<b>Ada</b>"})
        person_id = person.id
        automation = make_automation(account_id, HOOK_URL, name="<b>Hook</b>")
        automation_id = automation.id

    person_page = manager_client.get(f"/people/{person_id}/delete").text
    automation_page = manager_client.get(f"/automations/{automation_id}/delete").text

    assert "<b>" not in person_page
    assert "Delete &lt;b&gt;Ada&lt;/b&gt;?" in person_page
    assert "<b>" not in automation_page
    assert "Delete &lt;b&gt;Hook&lt;/b&gt;?" in automation_page
