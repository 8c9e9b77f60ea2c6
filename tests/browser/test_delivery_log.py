"""An automation's delivery log in Chromium: live updates through htmx, and Redeliver."""

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from pdauto import crm
from tests.factories import make_automation

from .conftest import log_in

# The log refreshes every 3 s, and the worker needs a moment to send.
LOG_UPDATE_TIMEOUT_MS = 15_000
# Longer than one refresh of the log.
ONE_REFRESH_MS = 4_000
NO_RELOAD_MARK = "window.pdautoNoReloadMark"


@pytest.fixture
def automation_id(app, users, receiver):
    receiver.respond("/hooks", status=200, body="thanks")
    with app.app_context():
        automation = make_automation(
            users["manager"][2],
            receiver.url("/hooks"),
            name="Deal created",
            event_model="deal",
            event_action="created",
        )
        return automation.id


@pytest.fixture
def log_page(browser_page, live_server, users, automation_id):
    """A manager's browser on the automation's page, with no deliveries yet."""
    log_in(browser_page, live_server, users["manager"][1])
    browser_page.goto(live_server.url(f"/automations/{automation_id}"))
    expect(browser_page.get_by_role("heading", name="Deliveries")).to_be_visible()
    return browser_page


def create_deal(app, users, name="Big deal"):
    with app.app_context():
        fields = {"name": name, "value": Decimal("5000"), "status": "open", "stage": ""}
        return crm.create_record("deal", users["manager"][2], fields).id


def mark_page(page):
    """Set a JavaScript value that a reload or a navigation would lose."""
    page.evaluate(f"{NO_RELOAD_MARK} = 'no reload'")


def assert_not_reloaded(page):
    assert page.evaluate(NO_RELOAD_MARK) == "no reload"


def test_new_deal_appears_in_log(log_page, live_server, receiver, rq_worker):
    expect(log_page.get_by_text("No deliveries yet.")).to_be_visible()
    mark_page(log_page)

    deal_page = log_page.context.new_page()
    deal_page.goto(live_server.url("/deals/new"))
    deal_page.get_by_label("Name").fill("Big deal")
    deal_page.get_by_label("Value").fill("5000")
    deal_page.get_by_label("Status").select_option("open")
    deal_page.get_by_role("button", name="Save").click()
    expect(deal_page.locator(".flash-success")).to_have_text("Added Big deal.")

    request = receiver.wait_for_requests(1, timeout=10)[0]
    assert request.json()["event_model"] == "deal"
    assert request.json()["event_action"] == "created"
    row = log_page.locator("tr.delivery")
    expect(row).to_have_count(1, timeout=LOG_UPDATE_TIMEOUT_MS)
    expect(row).to_have_attribute("data-delivery-id", request.headers["webhook-id"])
    expect(row.locator(".badge")).to_have_text("succeeded", timeout=LOG_UPDATE_TIMEOUT_MS)
    expect(row).to_contain_text("200")
    assert_not_reloaded(log_page)


def test_attempt_details_stay_open(log_page, app, users, receiver, rq_worker):
    create_deal(app, users)
    summary = log_page.locator("tr.attempt summary")
    expect(summary).to_contain_text("Attempt 1", timeout=LOG_UPDATE_TIMEOUT_MS)
    mark_page(log_page)

    summary.click()
    expect(log_page.locator("tr.attempt .attempt-detail")).to_contain_text("thanks")
    log_page.wait_for_timeout(ONE_REFRESH_MS)

    expect(log_page.locator("tr.attempt details")).to_have_attribute("open", "")
    assert_not_reloaded(log_page)


def test_focus_survives_log_refresh(log_page, app, users, receiver, rq_worker):
    create_deal(app, users)
    redeliver = log_page.get_by_role("button", name="Redeliver", exact=True)
    expect(redeliver).to_be_visible(timeout=LOG_UPDATE_TIMEOUT_MS)
    redeliver.focus()

    log_page.wait_for_timeout(ONE_REFRESH_MS)

    expect(redeliver).to_be_focused()


def test_redeliver_sends_same_webhook_id(log_page, app, users, receiver, rq_worker):
    create_deal(app, users)
    first = receiver.wait_for_requests(1, timeout=10)[0]
    row = log_page.locator("tr.delivery")
    expect(row.locator(".badge")).to_have_text("succeeded", timeout=LOG_UPDATE_TIMEOUT_MS)

    row.get_by_role("button", name="Redeliver", exact=True).click()

    delivery_id = first.headers["webhook-id"]
    expect(log_page.locator(".flash-success")).to_have_text(f"Delivery {delivery_id} queued again.")
    second = receiver.wait_for_requests(2, timeout=10)[1]
    assert second.headers["webhook-id"] == delivery_id
    assert second.json()["event_model_id"] == first.json()["event_model_id"]
    mark_page(log_page)
    expect(row.locator(".attempt-count")).to_have_text("2", timeout=LOG_UPDATE_TIMEOUT_MS)
    expect(log_page.locator("tr.attempt summary").nth(1)).to_contain_text("Attempt 2")
    assert_not_reloaded(log_page)


def test_failed_delivery_shows_error(log_page, app, users, receiver, rq_worker):
    receiver.respond("/hooks", status=500, body="receiver is broken")
    create_deal(app, users)

    row = log_page.locator("tr.delivery")
    expect(row).to_contain_text("500", timeout=LOG_UPDATE_TIMEOUT_MS)
    # The first retry is scheduled later, so the delivery waits as pending.
    expect(row.locator(".badge")).to_have_text("pending")
    log_page.locator("tr.attempt summary").click()
    expect(log_page.locator("tr.attempt .attempt-detail")).to_contain_text("receiver is broken")
