"""The login page and the automation builder with Test Now, driven in Chromium."""

import re

import pytest
from playwright.sync_api import expect

from pdauto.extensions import db
from pdauto.models import Automation

from .conftest import log_in

# Seconds the slow receiver waits, longer than the app's 2 s Test Now deadline.
SLOW_RECEIVER_DELAY = 4.0


@pytest.fixture
def builder(browser_page, live_server, users):
    """A manager's browser on the empty builder page."""
    log_in(browser_page, live_server, users["manager"][1])
    browser_page.goto(live_server.url("/automations/"))
    browser_page.get_by_role("link", name="New automation").click()
    expect(browser_page.get_by_role("heading", name="New automation")).to_be_visible()
    return browser_page


def fill_builder(page, url, name="Deal created"):
    page.get_by_label("Name").fill(name)
    page.get_by_label("When a").select_option("deal")
    page.get_by_label("is", exact=True).select_option("created")
    page.get_by_label("URL").fill(url)
    page.get_by_label("Failure notification email").fill("ops@example.com")


def save_button(page):
    return page.get_by_role("button", name="Save")


def run_test_button(page):
    return page.get_by_role("button", name="Test Now")


def result_panel(page):
    return page.locator("#test-result")


def test_login_shows_home(browser_page, live_server, users):
    email = users["manager"][1]

    log_in(browser_page, live_server, email)

    expect(browser_page.get_by_role("heading", name="Home")).to_be_visible()
    expect(browser_page.locator(".who")).to_contain_text(email)


def test_login_with_wrong_password_rejected(browser_page, browser_errors, live_server, users):
    browser_errors.allow_status(401, "/login")
    browser_page.goto(live_server.url("/automations/"))
    expect(browser_page).to_have_url(re.compile(r"/login\?next="))

    browser_page.get_by_label("Email").fill(users["manager"][1])
    browser_page.get_by_label("Password").fill("not the password")
    browser_page.get_by_role("button", name="Log in").click()

    expect(browser_page.locator(".flash-error")).to_have_text("Invalid email or password.")
    expect(browser_page.get_by_role("heading", name="Log in")).to_be_visible()


def test_builder_starts_with_save_disabled(builder):
    fill_builder(builder, "http://127.0.0.1:9/hooks")

    expect(save_button(builder)).to_be_disabled()
    expect(run_test_button(builder)).to_be_enabled()


def test_receiver_200_enables_save(builder, receiver):
    receiver.respond("/hooks", status=200, body='{"received": true}')
    fill_builder(builder, receiver.url("/hooks"))

    run_test_button(builder).click()

    expect(result_panel(builder)).to_contain_text("Success:")
    expect(result_panel(builder)).to_contain_text("200 OK")
    expect(result_panel(builder)).to_contain_text('{"received": true}')
    expect(save_button(builder)).to_be_enabled()
    request = receiver.wait_for_requests(1)[0]
    assert request.json()["test"] is True
    assert request.json()["trigger"] == "Deal created"
    assert request.headers["webhook-signature"].startswith("v1,")


def test_url_edit_disables_save(builder, receiver):
    fill_builder(builder, receiver.url("/hooks"))
    run_test_button(builder).click()
    expect(save_button(builder)).to_be_enabled()

    builder.get_by_label("URL").fill(receiver.url("/other-hooks"))

    expect(save_button(builder)).to_be_disabled()
    expect(result_panel(builder)).to_be_empty()
    expect(builder.locator("#save-hint")).to_contain_text("press Test Now again")


def test_content_type_change_disables_save(builder, receiver):
    fill_builder(builder, receiver.url("/hooks"))
    run_test_button(builder).click()
    expect(save_button(builder)).to_be_enabled()

    builder.get_by_text("Advanced settings").click()
    builder.get_by_label("Content type").select_option("application/x-www-form-urlencoded")

    expect(save_button(builder)).to_be_disabled()


def test_receiver_500_shows_message(builder, receiver):
    receiver.respond("/hooks", status=500, body="database is down, try later")
    fill_builder(builder, receiver.url("/hooks"))

    run_test_button(builder).click()

    expect(result_panel(builder)).to_contain_text("Failed:")
    expect(result_panel(builder)).to_contain_text("500 Internal Server Error")
    expect(result_panel(builder)).to_contain_text("database is down, try later")
    expect(save_button(builder)).to_be_disabled()
    expect(run_test_button(builder)).to_be_enabled()


def test_slow_receiver_shows_progress_then_timeout(builder, receiver):
    receiver.respond("/slow", delay=SLOW_RECEIVER_DELAY)
    fill_builder(builder, receiver.url("/slow"))
    progress = builder.locator("#test-progress")
    expect(progress).to_be_hidden()

    run_test_button(builder).click()

    expect(progress).to_be_visible()
    expect(progress).to_contain_text("Testing")
    expect(result_panel(builder)).to_contain_text("timed out after 2 s")
    expect(progress).to_be_hidden()
    expect(save_button(builder)).to_be_disabled()

    expect(run_test_button(builder)).to_be_enabled()
    receiver.respond("/slow", status=200)
    run_test_button(builder).click()

    expect(result_panel(builder)).to_contain_text("200 OK")
    expect(save_button(builder)).to_be_enabled()
    assert len(receiver.wait_for_requests(2)) == 2


def test_late_response_for_old_url_ignored(builder, receiver):
    receiver.respond("/slow", delay=1.0)
    fill_builder(builder, receiver.url("/slow"))
    run_test_button(builder).click()
    expect(builder.locator("#test-progress")).to_be_visible()

    builder.get_by_label("URL").fill(receiver.url("/other"))

    expect(builder.locator("#test-progress")).to_be_hidden()
    receiver.wait_for_requests(1)
    # The old test has received its 200 by now, and the response was dropped.
    builder.wait_for_timeout(1500)
    expect(save_button(builder)).to_be_disabled()
    expect(builder.locator("#test-outcome")).to_have_count(0)
    expect(run_test_button(builder)).to_be_enabled()


RECORD_SHOWN_RESULTS = """() => {
    const panel = document.getElementById("test-result");
    window.shownResults = [];
    new MutationObserver(() => window.shownResults.push(panel.textContent))
        .observe(panel, {childList: true, subtree: true});
}"""


def test_second_press_supersedes_first(builder, receiver):
    receiver.respond("/hooks", status=500, body="first press", delay=1.0)
    fill_builder(builder, receiver.url("/hooks"))
    builder.evaluate(RECORD_SHOWN_RESULTS)
    run_test_button(builder).click()
    receiver.wait_for_requests(1)

    receiver.respond("/hooks", status=200, body="second press")
    run_test_button(builder).click()

    expect(result_panel(builder)).to_contain_text("second press")
    shown = builder.evaluate("window.shownResults.join('\\n')")
    assert "first press" not in shown
    expect(save_button(builder)).to_be_enabled()
    expect(builder.locator("#test-progress")).to_be_hidden()
    assert len(receiver.wait_for_requests(2)) == 2


def test_save_after_successful_test(builder, receiver, app, live_server):
    fill_builder(builder, receiver.url("/hooks"), name="Deal created hook")
    run_test_button(builder).click()
    expect(save_button(builder)).to_be_enabled()

    save_button(builder).click()

    expect(builder.locator(".flash-success")).to_have_text(
        "Saved the automation Deal created hook."
    )
    expect(builder.get_by_role("heading", name="Deal created hook")).to_be_visible()
    expect(builder.get_by_text("No deliveries yet.")).to_be_visible()
    with app.app_context():
        automation = db.session.scalar(db.select(Automation))
        assert automation.name == "Deal created hook"
        assert automation.event_model == "deal"
        assert automation.event_action == "created"
    expect(builder).to_have_url(live_server.url(f"/automations/{automation.id}"))


def test_save_after_invalid_form_needs_no_new_test(builder, browser_errors, receiver, app):
    """A form sent back for a missing name keeps the passed test, so Save stays enabled."""
    browser_errors.allow_status(422, "/automations/new")
    fill_builder(builder, receiver.url("/hooks"), name="")
    run_test_button(builder).click()
    expect(save_button(builder)).to_be_enabled()
    save_button(builder).click()
    expect(builder.locator("#save-hint")).to_contain_text("answered 2xx in your last test")
    requests_before = len(receiver.requests)

    builder.get_by_label("Name").fill("Named after the error")
    expect(save_button(builder)).to_be_enabled()
    save_button(builder).click()

    expect(builder.get_by_role("heading", name="Named after the error")).to_be_visible()
    assert len(receiver.requests) == requests_before
    with app.app_context():
        assert db.session.scalar(db.select(Automation.name)) == "Named after the error"


def test_url_with_fragment_enables_save(builder, receiver):
    # The app stores the URL without its fragment, and a test of the typed text enables Save.
    fill_builder(builder, "  " + receiver.url("/hooks") + "#part  ")

    run_test_button(builder).click()

    expect(result_panel(builder)).to_contain_text("200 OK")
    expect(save_button(builder)).to_be_enabled()
    assert receiver.wait_for_requests(1)[0].path == "/hooks"


def tab_to(page, target, max_presses=5):
    """Press Tab until `target` has the focus, and fail after `max_presses` presses."""
    for _ in range(max_presses):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            return
    pytest.fail(f"{target} did not get the focus after {max_presses} presses of Tab")


def test_builder_usable_with_keyboard(builder, receiver):
    keyboard = builder.keyboard
    builder.get_by_label("Name").focus()
    keyboard.type("Deal created by keyboard")
    keyboard.press("Tab")
    expect(builder.get_by_label("When a")).to_be_focused()
    keyboard.type("Deal")
    keyboard.press("Tab")
    expect(builder.get_by_label("is", exact=True)).to_be_focused()
    keyboard.press("Tab")
    expect(builder.get_by_role("button", name="Add condition")).to_be_focused()
    keyboard.press("Tab")
    expect(builder.get_by_label("URL")).to_be_focused()
    keyboard.type(receiver.url("/hooks"))
    keyboard.press("Tab")
    keyboard.type("ops@example.com")
    keyboard.press("Tab")
    expect(builder.get_by_text("Advanced settings")).to_be_focused()
    keyboard.press("Tab")
    expect(run_test_button(builder)).to_be_focused()

    keyboard.press("Enter")
    expect(save_button(builder)).to_be_enabled()
    # The result's "Response headers" and "Response body" toggles and the two
    # buttons that add steps come first.
    tab_to(builder, save_button(builder), max_presses=7)
    keyboard.press("Enter")

    expect(builder.locator(".flash-success")).to_have_text(
        "Saved the automation Deal created by keyboard."
    )
    expect(builder.get_by_text("When a deal is created")).to_be_visible()


def test_conditions_added_removed_and_saved(builder, receiver, app):
    fill_builder(builder, receiver.url("/hooks"), name="Deal won")
    builder.get_by_label("is", exact=True).select_option("updated")
    add = builder.get_by_role("button", name="Add condition")

    add.click()
    add.click()
    rows = builder.locator("#conditions .condition-row")
    expect(rows).to_have_count(2)
    rows.nth(0).get_by_label("Field", exact=True).select_option("status")
    rows.nth(0).get_by_label("Operator", exact=True).select_option("changed_to")
    rows.nth(0).get_by_label("Value", exact=True).fill("won")
    rows.nth(1).get_by_role("button", name="Remove").click()
    expect(rows).to_have_count(1)
    run_test_button(builder).click()
    expect(save_button(builder)).to_be_enabled()
    save_button(builder).click()

    expect(builder.get_by_text("status changed to won")).to_be_visible()
    with app.app_context():
        automation = db.session.scalar(db.select(Automation))
        assert automation.conditions == [{"field": "status", "op": "changed_to", "value": "won"}]


def steps(page):
    return page.locator("#steps .step")


def test_steps_added_ordered_and_saved(builder, receiver, app, users):
    manager_email = users["manager"][1]
    fill_builder(builder, receiver.url("/hooks"), name="Deal created with steps")
    hint = builder.locator("#step-fields-hint")
    expect(hint).to_contain_text("{{ deal.name }}")

    builder.get_by_role("button", name="Add Send email step").click()
    email = steps(builder).nth(0)
    expect(email.get_by_label("To", exact=True)).to_be_focused()
    email.get_by_label("To", exact=True).fill("Ada Lovelace <ada@example.com>")
    email.get_by_label("Also send to the record's owner").check()
    email.get_by_label("Subject").fill("New deal {{ deal.name }}")
    email.get_by_label("Body").fill("Worth {{ deal.value }}")
    builder.get_by_role("button", name="Add Create task step").click()
    task = steps(builder).filter(has_text="Create task")
    task.get_by_label("Assign to").select_option(label=manager_email)
    task.get_by_label("Due in (days)").fill("2")
    task.get_by_label("Title").fill("Call about {{ deal.name }}")
    task.get_by_role("button", name="Move up").click()
    expect(steps(builder).nth(0)).to_contain_text("Create task")
    expect(task.get_by_role("button", name="Move up")).to_be_focused()
    run_test_button(builder).click()
    expect(save_button(builder)).to_be_enabled()
    save_button(builder).click()

    expect(builder.locator(".flash-success")).to_have_text(
        "Saved the automation Deal created with steps."
    )
    summary = builder.locator(".steps-summary li")
    expect(summary).to_have_count(3)
    expect(summary.nth(0)).to_contain_text("Call API: POST to")
    expect(summary.nth(1)).to_have_text(
        f"Create task for {manager_email}, due in 2 days: Call about {{{{ deal.name }}}}"
    )
    expect(summary.nth(2)).to_have_text(
        "Send email to Ada Lovelace <ada@example.com>, the record's owner: New deal {{ deal.name }}"
    )
    with app.app_context():
        automation = db.session.scalar(db.select(Automation))
        assert [action.kind for action in automation.actions] == [
            "call_api",
            "create_task",
            "send_email",
        ]
        assert automation.actions[2].settings["body"] == "Worth {{ deal.value }}"


def test_step_hint_follows_record_kind(builder):
    hint = builder.locator("#step-fields-hint")

    builder.get_by_label("When a").select_option("company")

    expect(hint).to_contain_text("The fields of a company: id, name, website")


def test_steps_removed_with_keyboard(builder):
    keyboard = builder.keyboard
    add_email = builder.get_by_role("button", name="Add Send email step")
    add_email.focus()
    keyboard.press("Enter")
    keyboard.press("Enter")
    expect(steps(builder)).to_have_count(1)
    add_email.focus()
    keyboard.press("Enter")
    expect(steps(builder)).to_have_count(2)

    steps(builder).nth(0).get_by_role("button", name="Remove step").focus()
    keyboard.press("Enter")

    expect(steps(builder)).to_have_count(1)
    remaining_remove = steps(builder).nth(0).get_by_role("button", name="Remove step")
    expect(remaining_remove).to_be_focused()
    keyboard.press("Enter")
    expect(steps(builder)).to_have_count(0)
    expect(add_email).to_be_focused()
