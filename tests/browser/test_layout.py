"""Layout of the main pages in Chromium at desktop and phone widths, with long values.

No page may scroll sideways, at the document or inside an element. On a phone a
table stacks each row's cells, shows every value with its column name, and stays
a table for assistive technology. Every control is reachable with the Tab key
and lies inside the window when focused.

Screenshots go to the directory in PDAUTO_SCREENSHOTS, or to the test's
temporary directory, named like "layout-people-phone.png".
"""

import os
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import ApiToken, Delivery, Event, Task, User, utcnow
from tests.conftest import make_user
from tests.factories import make_automation

from .conftest import log_in

VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844), "small-phone": (320, 640)}
PHONE_VIEWPORTS = ["phone", "small-phone"]
PAGES = {
    "home": "/",
    "people": "/people",
    "companies": "/companies",
    "deals": "/deals",
    "automations": "/automations/",
    "tasks": "/tasks",
    "users": "/users",
    "tokens": "/api-tokens",
}
# Pages whose tables hold one row per record, so that every row can be checked.
TABLE_PAGES = ["home", "people", "companies", "deals", "automations", "users", "tokens"]

# Real-world values with long runs where a line cannot break: a long surname, an
# email address and a URL with a query string.
LONG_SURNAME = "Wolfeschlegelsteinhausenbergerdorff-Voralternwarengewissenhaftschaferswessen"
LONG_EMAIL = "maximiliana.wolfeschlegelsteinhausenbergerdorff@procurement.example-enterprises.co.uk"
LONG_URL = (
    "https://www.example-enterprises.co.uk/partners/directory/entry?id=8472615"
    "&utm_source=newsletter&utm_medium=email&utm_campaign=spring_product_launch_2026"
)
LONG_ADMIN_EMAIL = "revenue.operations.administrator@sales-team.example-enterprises.com"

MAX_PROBLEMS_PER_PAGE = 8

# Lists every element whose right edge lies beyond the window, and every element
# that scrolls sideways inside itself, as "tag.class: text" descriptions.
FIND_OVERFLOW_JS = """
() => {
  const width = window.innerWidth;
  const describe = (element) => {
    const classes = element.classList.length ? "." + [...element.classList].join(".") : "";
    const text = (element.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 60);
    return `<${element.tagName.toLowerCase()}${classes}> "${text}"`;
  };
  const problems = [];
  for (const element of document.body.querySelectorAll("*")) {
    const box = element.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 0.5) {
      problems.push(`${describe(element)} ends at ${Math.round(box.right)} px`);
    }
    const overflowX = getComputedStyle(element).overflowX;
    const scrolls = overflowX === "auto" || overflowX === "scroll";
    if (scrolls && element.scrollWidth > element.clientWidth) {
      problems.push(`${describe(element)} scrolls sideways by ${
        element.scrollWidth - element.clientWidth} px`);
    }
  }
  return problems;
}
"""

# Describes each body row of each stackable table: for every cell, its column
# header's text, its data-label, the label drawn before it and its box.
STACKED_ROWS_JS = """
() => [...document.querySelectorAll("table.stackable")].flatMap((table) => {
  const headers = [...table.querySelectorAll("thead th")].map(
    (header) => header.textContent.trim());
  return [...table.querySelectorAll("tbody tr")].map((row) =>
    [...row.children].map((cell, index) => {
      const box = cell.getBoundingClientRect();
      return {
        header: headers[index],
        headerHidden: !!table.querySelectorAll("thead th")[index]
          .querySelector(".visually-hidden"),
        dataLabel: cell.dataset.label ?? null,
        shownLabel: getComputedStyle(cell, "::before").content,
        text: cell.textContent.trim().replace(/\\s+/g, " ").slice(0, 40),
        top: box.top,
        bottom: box.bottom,
      };
    }));
})
"""

FOCUSABLE_SELECTOR = "a[href], button:not([disabled]), input:not([type=hidden]), select, textarea"

# Scrolls the focused element into view and describes it: its index among the
# page's focusable elements (-1 if it is not one of them) and its box.
FOCUSED_ELEMENT_JS = f"""
() => {{
  const element = document.activeElement;
  const focusable = [...document.querySelectorAll("{FOCUSABLE_SELECTOR}")];
  element.scrollIntoView({{block: "nearest", inline: "nearest"}});
  const box = element.getBoundingClientRect();
  const name = (element.getAttribute("aria-label") || element.textContent || "")
    .trim().replace(/\\s+/g, " ").slice(0, 60);
  return {{
    index: focusable.indexOf(element),
    tag: element.tagName.toLowerCase(),
    name,
    left: box.left,
    right: box.right,
    width: window.innerWidth,
  }};
}}
"""
FOCUSABLE_NAMES_JS = f"""
() => [...document.querySelectorAll("{FOCUSABLE_SELECTOR}")].map(
  (element) => element.tagName.toLowerCase() + " " + element.textContent.trim().slice(0, 60))
"""


@pytest.fixture
def screenshot_dir(tmp_path):
    configured = os.environ.get("PDAUTO_SCREENSHOTS")
    directory = Path(configured) if configured else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def add_deliveries(automation, states, last_status=None, last_error=""):
    """Record one delivery in each of `states` for the automation's first action."""
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
                attempt_count=1,
                last_status=last_status,
                last_error=last_error,
            )
        )
    db.session.commit()


def add_task(user, title, due_in_days, record=None, completed=False):
    db.session.add(
        Task(
            account_id=user.account_id,
            user_id=user.id,
            title=title,
            record_model=record.event_model if record else "deal",
            record_id=record.id if record else 0,
            due_on=date.today() + timedelta(days=due_in_days),
            completed_at=utcnow() if completed else None,
        )
    )
    db.session.commit()


@pytest.fixture
def admin_email(app, users):
    """An admin with a long email, and an account full of long names, emails and URLs."""
    account_id = users["admin"][2]
    with app.app_context():
        admin = make_user("admin", email=LONG_ADMIN_EMAIL)
        make_user("rep", email=LONG_EMAIL)
        make_user("rep", email="sam@example.com").active = False
        db.session.commit()

        for first_name, last_name, email in [
            ("Ada", "Lovelace", "ada@example.com"),
            ("Maximiliana", LONG_SURNAME, LONG_EMAIL),
        ]:
            person = {"first_name": first_name, "last_name": last_name, "email": email}
            crm.create_record("person", account_id, person)
        for name, website in [
            ("Initech", "https://initech.example.com"),
            ("Wolfeschlegelsteinhausenbergerdorff Holdings", LONG_URL),
        ]:
            crm.create_record("company", account_id, {"name": name, "website": website})
        long_deal = None
        for name, value, status, stage in [
            ("Globex renewal", "125000", "open", "proposal"),
            (LONG_SURNAME + "-framework-agreement-2026", "999999999999.99", "won", "x" * 60),
        ]:
            fields = {"name": name, "value": Decimal(value), "status": status, "stage": stage}
            long_deal = crm.create_record("deal", account_id, fields)

        billing = make_automation(account_id, LONG_URL, name="Tell billing about new deals")
        add_deliveries(billing, ["succeeded"] * 3, last_status=200)
        syncing = make_automation(
            account_id,
            LONG_URL,
            name="Sync-" + LONG_SURNAME + "-to-the-mailing-list-service",
            event_model="person",
        )
        syncing.failing_since = utcnow() - timedelta(hours=5)
        add_deliveries(
            syncing,
            ["failed", "pending"],
            last_error="could not resolve the host " + LONG_URL.split("/")[2] * 3,
        )
        paused = make_automation(account_id, LONG_URL, name="Paused webhook")
        paused.active = False
        paused.paused_at = utcnow()
        paused.pause_reason = "The receiver answered 410 Gone at " + LONG_URL
        db.session.commit()

        add_task(admin, "Call " + LONG_EMAIL + " about the renewal", -3, record=long_deal)
        add_task(admin, "Send the contract to Ada", 2)
        add_task(admin, "Read " + LONG_URL, 5, record=long_deal)
        add_task(admin, "Review " + LONG_URL, -1, completed=True)

        ApiToken.issue(admin, "nightly-export-to-the-" + LONG_SURNAME.lower() + "-warehouse")
        revoked, _ = ApiToken.issue(admin, "Old spreadsheet sync")
        revoked.revoked_at = utcnow()
        used, _ = ApiToken.issue(admin, "Zapier")
        used.last_used_at = utcnow()
        db.session.commit()
        assert db.session.get(User, admin.id).email == LONG_ADMIN_EMAIL
    return LONG_ADMIN_EMAIL


@pytest.fixture
def logged_in_page(new_browser_page, live_server, admin_email):
    """Return `open_page(viewport)`: a page of the long-email admin, logged in."""

    def open_page(viewport):
        width, height = VIEWPORTS[viewport]
        page = new_browser_page(width=width, height=height)
        log_in(page, live_server, admin_email)
        return page

    return open_page


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_pages_fit_window(viewport, logged_in_page, live_server, screenshot_dir):
    page = logged_in_page(viewport)
    problems = []

    for name, path in PAGES.items():
        page.goto(live_server.url(path))
        page.screenshot(path=str(screenshot_dir / f"layout-{name}-{viewport}.png"), full_page=True)
        scroll_width, window_width = page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]"
        )
        if scroll_width > window_width:
            problems.append(
                f"{name}: the page is {scroll_width} px wide in a {window_width} px window"
            )
        # Document order lists the outermost overflowing element first.
        found = page.evaluate(FIND_OVERFLOW_JS)[:MAX_PROBLEMS_PER_PAGE]
        problems.extend(f"{name}: {problem}" for problem in found)

    assert not problems, "sideways overflow:\n" + "\n".join(problems)


@pytest.mark.parametrize("viewport", PHONE_VIEWPORTS)
def test_phone_rows_stack_with_labels(viewport, logged_in_page, live_server):
    page = logged_in_page(viewport)

    for name in TABLE_PAGES:
        page.goto(live_server.url(PAGES[name]))
        rows = page.evaluate(STACKED_ROWS_JS)

        assert rows, f"{name} has no stackable table"
        for row in rows:
            for cell in row:
                where = f"{name}, cell {cell['text']!r} in column {cell['header']!r}"
                if cell["headerHidden"]:
                    assert cell["dataLabel"] is None, where
                    continue
                assert cell["dataLabel"] == cell["header"], where
                assert cell["shownLabel"] == f'"{cell["header"]}"', where
            for above, below in zip(row, row[1:], strict=False):
                assert below["top"] >= above["bottom"] - 1, (
                    f"{name}: {below['text']!r} is beside {above['text']!r}, not below it"
                )


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_cell_labels_only_on_phone(viewport, logged_in_page, live_server):
    """Check that phones label each cell, and desktops show the header row instead."""
    page = logged_in_page(viewport)
    page.goto(live_server.url("/people"))

    shown_label = page.evaluate(STACKED_ROWS_JS)[0][0]["shownLabel"]
    header = page.get_by_role("columnheader", name="Email")

    if viewport == "desktop":
        assert shown_label == "none"
        assert header.is_visible()
    else:
        assert shown_label == '"Name"'
        # The header stays in the page for screen readers, in a 1 px box.
        assert header.bounding_box()["width"] <= 1


def test_phone_tables_keep_semantics(logged_in_page, live_server):
    page = logged_in_page("phone")
    page.goto(live_server.url("/people"))

    table = page.get_by_role("table")
    assert table.count() == 1
    assert table.get_by_role("row").count() == 3
    assert table.get_by_role("columnheader", name="Email").count() == 1
    assert table.get_by_role("cell", name=LONG_EMAIL).count() == 1
    long_row = table.get_by_role("row").filter(has_text=LONG_SURNAME)
    assert long_row.get_by_role("link", name="Edit").count() == 1
    assert long_row.get_by_role("link", name="Delete").count() == 1


@pytest.mark.parametrize("viewport", ["desktop", *PHONE_VIEWPORTS])
def test_tab_reaches_every_control(viewport, logged_in_page, live_server):
    page = logged_in_page(viewport)

    for name, path in PAGES.items():
        page.goto(live_server.url(path))
        focusable = page.evaluate(FOCUSABLE_NAMES_JS)
        reached = {}
        # Tab until focus comes back to an element it has visited: past the
        # last control, it goes through the body or the browser's own UI and
        # starts again at the first.
        for _ in range(len(focusable) + 3):
            page.keyboard.press("Tab")
            element = page.evaluate(FOCUSED_ELEMENT_JS)
            if element["index"] in reached:
                break
            reached[element["index"]] = element
        reached.pop(-1, None)

        missed = [focusable[index] for index in range(len(focusable)) if index not in reached]
        assert not missed, f"{name}: Tab never reached {missed}"
        for element in reached.values():
            where = f"{name}: <{element['tag']}> {element['name']!r}"
            assert element["left"] >= 0, f"{where} starts left of the window"
            assert element["right"] <= element["width"], f"{where} ends right of the window"
