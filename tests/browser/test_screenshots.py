"""Screenshots of the main pages at desktop and phone widths, and a check for overflow.

The PNG files go to the directory in PDAUTO_SCREENSHOTS, or to the test's
temporary directory, named like "builder-phone.png". test_layout.py checks the
same pages with long names, emails and URLs, and at a 320 px width.
"""

import os
import time
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import expect

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import Delivery
from tests.factories import make_automation

from .conftest import log_in

VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
PAGE_OVERFLOW = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


@pytest.fixture
def screenshot_dir(tmp_path):
    configured = os.environ.get("PDAUTO_SCREENSHOTS")
    directory = Path(configured) if configured else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def sample_data(app, users, make_receiver, rq_worker):
    """Two automations, people and deals, and deliveries that succeeded and failed."""
    working = make_receiver()
    broken = make_receiver()
    broken.respond("*", status=500, body='{"error": "the CRM sync service is down"}')
    account_id = users["manager"][2]
    owner_id = users["manager"][0]
    with app.app_context():
        automation = make_automation(
            account_id,
            working.url("/hooks/deals"),
            name="Tell the billing system about new deals",
            event_model="deal",
            event_action="created",
        )
        make_automation(
            account_id,
            broken.url("/crm-sync"),
            name="Sync new people to the mailing list",
            event_model="person",
            event_action="created",
        )
        people = [("Ada", "Lovelace", "ada@example.com"), ("Grace", "Hopper", "grace@example.com")]
        for first_name, last_name, email in people:
            crm.create_record(
                "person",
                account_id,
                {
                    "first_name": first_name,
                    "last_name": last_name,
                    "email": email,
                    "phone": "",
                    "owner_id": owner_id,
                },
            )
        deals = [("Globex renewal", "125000", "open"), ("Initech pilot", "9800.50", "won")]
        for name, value, status in deals:
            fields = {
                "name": name,
                "value": Decimal(value),
                "status": status,
                "stage": "proposal",
                "owner_id": owner_id,
            }
            crm.create_record("deal", account_id, fields)
        automation_id = automation.id
    wait_for_first_attempts(app, count=4)
    return {"automation_id": automation_id, "receiver": working}


def wait_for_first_attempts(app, count, timeout=15.0):
    """Wait until `count` deliveries have had their first attempt."""
    deadline = time.monotonic() + timeout
    with app.app_context():
        query = db.select(db.func.count(Delivery.id)).where(Delivery.attempt_count > 0)
        while True:
            done = db.session.scalar(query)
            db.session.rollback()
            if done >= count:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{done} of {count} deliveries were attempted in {timeout} s")
            time.sleep(0.1)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_main_pages_screenshots(
    viewport, new_browser_page, live_server, users, sample_data, screenshot_dir
):
    width, height = VIEWPORTS[viewport]
    page = new_browser_page(width=width, height=height)
    overflowing = []

    def capture(name):
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshot_dir / f"{name}-{viewport}.png"), full_page=True)
        overflow = page.evaluate(PAGE_OVERFLOW)
        if overflow > 0:
            overflowing.append(f"{name} is {overflow} px wider than the {width} px window")

    page.goto(live_server.url("/login"))
    capture("login")

    log_in(page, live_server, users["manager"][1])
    capture("home")

    page.goto(live_server.url("/automations/"))
    capture("automations")

    page.goto(live_server.url("/automations/new"))
    page.get_by_label("Name").fill("Tell the warehouse about won deals")
    page.get_by_label("URL").fill(sample_data["receiver"].url("/hooks/warehouse"))
    page.get_by_label("Failure notification email").fill("ops@example.com")
    page.get_by_role("button", name="Test Now").click()
    expect(page.locator("#test-result")).to_contain_text("200 OK")
    capture("builder")

    page.goto(live_server.url(f"/automations/{sample_data['automation_id']}"))
    expect(page.locator("tr.delivery")).to_have_count(2)
    page.locator("tr.attempt summary").first.click()
    capture("automation")

    page.goto(live_server.url("/people"))
    capture("people")

    page.goto(live_server.url("/deals"))
    capture("deals")

    page.goto(live_server.url("/companies"))
    capture("companies")

    page.goto(live_server.url("/tasks"))
    capture("tasks")

    page.goto(live_server.url("/api-tokens"))
    capture("tokens")

    assert not overflowing, "pages wider than the window:\n" + "\n".join(overflowing)
