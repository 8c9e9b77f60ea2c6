"""Deleting a person in Chromium: the row's Delete link, the confirmation page, and the result."""

import pytest
from playwright.sync_api import expect

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import Person

from .conftest import DEFAULT_TIMEOUT_MS, log_in


def add_people(app, account_id):
    """Create Ada Lovelace and Grace Hopper, and return Ada's id."""
    with app.app_context():
        ada = crm.create_record(
            "person", account_id, {"first_name": "Ada", "last_name": "Lovelace"}
        )
        crm.create_record("person", account_id, {"first_name": "Grace", "last_name": "Hopper"})
        return ada.id


@pytest.fixture
def page_without_javascript(chromium_browser, browser_errors):
    """A desktop-sized page with JavaScript turned off, in a fresh browser context."""
    context = chromium_browser.new_context(
        viewport={"width": 1280, "height": 800}, java_script_enabled=False
    )
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.on("page", browser_errors.watch)
    yield context.new_page()
    context.close()


@pytest.mark.parametrize("javascript", ["on", "off"])
def test_delete_person_after_confirming(app, users, live_server, request, javascript):
    ada_id = add_people(app, users["manager"][2])
    fixture = "browser_page" if javascript == "on" else "page_without_javascript"
    page = request.getfixturevalue(fixture)
    log_in(page, live_server, users["manager"][1])
    page.goto(live_server.url("/people"))

    page.get_by_role("row").filter(has_text="Ada Lovelace").get_by_role(
        "link", name="Delete"
    ).click()

    expect(page).to_have_url(live_server.url(f"/people/{ada_id}/delete"))
    expect(page.get_by_role("heading", name="Delete Ada Lovelace?")).to_be_visible()
    with app.app_context():
        assert db.session.get(Person, ada_id) is not None

    page.get_by_role("button", name="Delete").click()

    expect(page).to_have_url(live_server.url("/people"))
    expect(page.get_by_role("status")).to_have_text("Deleted Ada Lovelace.")
    table = page.get_by_role("table")
    expect(table).not_to_contain_text("Ada Lovelace")
    expect(table).to_contain_text("Grace Hopper")
    with app.app_context():
        assert db.session.get(Person, ada_id) is None


def test_cancel_keeps_person(app, users, browser_page, live_server):
    ada_id = add_people(app, users["manager"][2])
    page = browser_page
    log_in(page, live_server, users["manager"][1])
    page.goto(live_server.url(f"/people/{ada_id}/delete"))

    page.get_by_role("link", name="Cancel").click()

    expect(page).to_have_url(live_server.url("/people"))
    expect(page.get_by_role("status")).to_have_count(0)
    expect(page.get_by_role("table")).to_contain_text("Ada Lovelace")
    with app.app_context():
        assert db.session.get(Person, ada_id) is not None
