"""Check that markup typed by users, or sent back by receivers, is shown as text on every page."""

import re

import pytest

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import Automation, Delivery
from tests.conftest import run_jobs
from tests.factories import make_automation

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(2)>'
PAYLOADS = (SCRIPT, ATTRIBUTE)
ESCAPED = ("&lt;script&gt;alert(1)&lt;/script&gt;", "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;")

RECORDS = {
    "people": {
        "first_name": "Ada " + SCRIPT,
        "last_name": "King " + ATTRIBUTE,
        "phone": SCRIPT,
    },
    "companies": {"name": "Initech " + SCRIPT, "website": ATTRIBUTE},
    "deals": {"name": "Deal " + ATTRIBUTE, "value": "10", "status": "open", "stage": SCRIPT},
}


def assert_escaped(html, where):
    for payload in PAYLOADS:
        assert payload not in html, where
    assert re.search(r"<script>(?!</script>)", html) is None, where
    assert "<img src=x" not in html, where


@pytest.mark.parametrize("collection", list(RECORDS))
def test_record_fields_escaped(manager_client, collection):
    created = manager_client.post(f"/{collection}/new", data=RECORDS[collection])
    assert created.status_code == 302

    listing = manager_client.get(f"/{collection}").text
    edit_path = re.search(rf'href="(/{collection}/\d+/edit)"', listing).group(1)
    edit_form = manager_client.get(edit_path).text

    assert_escaped(listing, "list")
    assert_escaped(edit_form, "edit form")
    assert ESCAPED[0] in listing + edit_form
    assert ESCAPED[1] in edit_form


def test_automation_and_log_escaped(app, users, manager_client, receiver):
    receiver.respond("/hook", status=500, body=SCRIPT + ATTRIBUTE)
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(
            account_id, receiver.url("/hook") + "?q=" + "%3Cscript%3E", name="Won " + SCRIPT
        )
        automation_id = automation.id
        crm.create_record("deal", account_id, {"name": "Deal " + ATTRIBUTE, "value": 5})
    run_jobs(app)
    receiver.wait_for_requests(1)
    with app.app_context():
        assert db.session.scalar(db.select(Delivery.last_status)) == 500
        assert db.session.get(Automation, automation_id).name.endswith(SCRIPT)

    pages = {
        "home": manager_client.get("/").text,
        "automations": manager_client.get("/automations/").text,
        "automation": manager_client.get(f"/automations/{automation_id}").text,
        "builder": manager_client.get(f"/automations/{automation_id}/edit").text,
        "log fragment": manager_client.get(
            f"/automations/{automation_id}", headers={"HX-Request": "true"}
        ).text,
    }

    for where, html in pages.items():
        assert_escaped(html, where)
    assert ESCAPED[0] in pages["automation"]


def test_test_now_answer_escaped(manager_client, receiver):
    receiver.respond("/hook", status=200, body=SCRIPT + ATTRIBUTE)

    fragment = manager_client.post(
        "/automations/test",
        data={
            "name": "Name " + SCRIPT,
            "event_model": "deal",
            "event_action": "created",
            "url": receiver.url("/hook"),
            "failure_email": "ops@example.com",
        },
        headers={"HX-Request": "true"},
    ).text

    assert_escaped(fragment, "Test Now fragment")
    assert ESCAPED[0] in fragment
