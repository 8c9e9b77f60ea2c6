"""The delivery log's keyset pages: Older and Newer links, the state filter, cursors.

Deliveries are inserted directly with chosen created_at values, so that several
share one time across a page boundary and the order rests on the id tie-breaker.
"""

import html
import re
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, insert

from pdauto.delivery_log import COUNT_LIMIT
from pdauto.extensions import db
from pdauto.models import Action, Attempt, Delivery, Event
from pdauto.views.automations import PAGE_SIZE
from tests.conftest import login
from tests.factories import make_automation

# Microseconds in the times check that a cursor keeps them.
START = datetime(2026, 3, 1, 12, 0, 0, 123456)
DELIVERY_ID = re.compile(r'data-delivery-id="([^"]+)"')


def add_deliveries(account_id, automation_id, times, states=("succeeded",), error=None):
    """Insert one event and one delivery per time, and return the delivery ids in order.

    States cycle through `states`. `error(n)` sets the nth delivery's last_error.
    """
    action_id = db.session.scalar(db.select(Action.id).where(Action.automation_id == automation_id))
    event_rows = [
        {
            "account_id": account_id,
            "model": "deal",
            "action": "created",
            "record_id": n + 1,
            "changes": {},
            "record": {},
            "occurred_at": at,
        }
        for n, at in enumerate(times)
    ]
    event_ids = db.session.scalars(
        insert(Event).returning(Event.id, sort_by_parameter_order=True), event_rows
    ).all()
    # Ids grow with the event id, so equal times are ordered by insertion.
    delivery_ids = [f"msg_{event_id:012d}{'f' * 20}" for event_id in event_ids]
    delivery_rows = [
        {
            "id": delivery_id,
            "account_id": account_id,
            "event_id": event_id,
            "action_id": action_id,
            "automation_id": automation_id,
            "state": states[n % len(states)],
            "attempt_count": 1,
            "last_error": error(n) if error else "",
            "created_at": at,
        }
        for n, (delivery_id, event_id, at) in enumerate(
            zip(delivery_ids, event_ids, times, strict=True)
        )
    ]
    db.session.execute(insert(Delivery), delivery_rows)
    db.session.commit()
    return delivery_ids


def grouped_times(count, group_size):
    """Return `count` times, `group_size` consecutive ones equal, one second between groups."""
    return [START + timedelta(seconds=n // group_size) for n in range(count)]


def newest_first(app, automation_id, state=None):
    with app.app_context():
        query = db.select(Delivery.id).where(Delivery.automation_id == automation_id)
        if state:
            query = query.where(Delivery.state == state)
        return db.session.scalars(
            query.order_by(Delivery.created_at.desc(), Delivery.id.desc())
        ).all()


def link(page, name):
    """Return the unescaped href of the pager's Newer or Older link, or None."""
    match = re.search(rf'id="deliveries-{name}" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None


def get_ok(client, url, **kwargs):
    response = client.get(url, **kwargs)
    assert response.status_code == 200, f"GET {url} returned {response.status_code}"
    return response.text


def walk(client, url, direction, max_pages=20):
    """Follow the `direction` links from `url`, and return each page's ids and its HTML."""
    ids_by_page = []
    pages = []
    for _ in range(max_pages):
        page = get_ok(client, url)
        pages.append(page)
        ids_by_page.append(DELIVERY_ID.findall(page))
        url = link(page, direction)
        if url is None:
            return ids_by_page, pages
    raise AssertionError(f"more than {max_pages} pages following {direction}")


@pytest.fixture
def automation_id(app, users):
    with app.app_context():
        return make_automation(users["manager"][2], "http://127.0.0.1:9/hook").id


@pytest.mark.parametrize("group_size", [6, 60], ids=["ties-across-boundaries", "all-equal"])
def test_walk_older_then_newer(app, users, manager_client, automation_id, group_size):
    times = grouped_times(60, group_size)
    with app.app_context():
        add_deliveries(users["manager"][2], automation_id, times)
    expected = newest_first(app, automation_id)
    # Both page boundaries fall between two deliveries created at the same time.
    times.sort(reverse=True)
    assert times[PAGE_SIZE - 1] == times[PAGE_SIZE]
    assert times[2 * PAGE_SIZE - 1] == times[2 * PAGE_SIZE]

    older_pages, pages = walk(manager_client, f"/automations/{automation_id}", "older")

    assert [len(ids) for ids in older_pages] == [25, 25, 10]
    assert [delivery for ids in older_pages for delivery in ids] == expected
    assert link(pages[0], "newer") is None
    assert "60 deliveries" in pages[0]

    newer_pages, pages = walk(manager_client, link(pages[-2], "older"), "newer")

    assert newer_pages == older_pages[::-1]
    assert link(pages[-1], "newer") is None
    assert link(pages[-1], "older") is not None


def test_newer_after_new_deliveries(app, users, manager_client, automation_id):
    """Newer pages show each delivery at least once, also when new ones arrive meanwhile."""
    account_id = users["manager"][2]
    with app.app_context():
        add_deliveries(account_id, automation_id, grouped_times(60, 7))
    older_pages, pages = walk(manager_client, f"/automations/{automation_id}", "older")
    with app.app_context():
        later = [START + timedelta(hours=1)] * 30
        add_deliveries(account_id, automation_id, later)
    expected = newest_first(app, automation_id)

    newer_pages, pages = walk(manager_client, link(pages[1], "older"), "newer")

    seen = [delivery for ids in newer_pages for delivery in ids]
    assert set(seen) == set(expected)
    assert newer_pages[0] == older_pages[2]
    assert newer_pages[-1] == expected[:PAGE_SIZE]
    for ids in newer_pages:
        assert ids == [delivery for delivery in expected if delivery in ids]


def test_state_filter_with_cursor(app, users, manager_client, automation_id):
    with app.app_context():
        add_deliveries(
            users["manager"][2],
            automation_id,
            grouped_times(120, 7),
            states=("failed", "succeeded", "failed", "pending"),
        )
    expected = newest_first(app, automation_id, state="failed")
    assert len(expected) == 60

    older_pages, pages = walk(manager_client, f"/automations/{automation_id}?state=failed", "older")

    assert [delivery for ids in older_pages for delivery in ids] == expected
    assert [len(ids) for ids in older_pages] == [25, 25, 10]
    assert "60 failed deliveries" in pages[0]
    for page in pages:
        for name in ("older", "newer"):
            href = link(page, name)
            if href is not None:
                assert "state=failed" in href
        assert "state=failed" in re.search(r'hx-get="([^"]+)"', page).group(1)

    newer_pages, _ = walk(manager_client, link(pages[1], "older"), "newer")

    assert newer_pages == older_pages[::-1]


def test_cursor_from_other_state(app, users, manager_client, automation_id):
    """A cursor taken on the unfiltered log also places a filtered page."""
    with app.app_context():
        add_deliveries(
            users["manager"][2],
            automation_id,
            grouped_times(60, 7),
            states=("failed", "succeeded"),
        )
    everything = newest_first(app, automation_id)
    failed = newest_first(app, automation_id, state="failed")
    first = get_ok(manager_client, f"/automations/{automation_id}")
    before = link(first, "older").split("before=", 1)[1]

    page = get_ok(manager_client, f"/automations/{automation_id}?state=failed&before={before}")

    remaining = everything[PAGE_SIZE:]
    assert DELIVERY_ID.findall(page) == [d for d in failed if d in remaining][:PAGE_SIZE]


def test_unknown_state_shows_all(app, users, manager_client, automation_id):
    with app.app_context():
        add_deliveries(users["manager"][2], automation_id, grouped_times(3, 1))

    page = get_ok(manager_client, f"/automations/{automation_id}?state=bogus")

    assert DELIVERY_ID.findall(page) == newest_first(app, automation_id)
    assert "state=bogus" not in page


MALFORMED_CURSORS = [
    "",
    "garbage",
    ",",
    "2026-03-01T12:00:00",
    ",msg_1",
    "2026-03-01T12:00:00,",
    "2026-13-01T12:00:00,msg_1",
    "2026-03-01T25:00:00,msg_1",
    "2026-02-30T12:00:00,msg_1",
    "2026-03-01 12:00:00,msg_1",
    "2026-03-01T12,msg_1",
    "20260301T120000,msg_1",
    "yesterday,msg_1",
    "2026-03-01T12:00:00,msg_<script>",
    "2026-03-01T12:00:00,msg_1,msg_2",
    "2026-03-01T12:00:00," + "a" * 41,
    "2026-03-01T12:00:00\x00,msg_1",
    "2026-03-01T12:00:00.1234567,msg_1",
    "0001-01-01T00:00:00+01:00,msg_1",
    "9999-12-31T23:59:59-01:00,msg_1",
    "\u0662\u0660\u0662\u0666-03-01T12:00:00,msg_1",
    "2026-03-01T12:00:00,msg_\u0661",
    "x" * 5000,
]


@pytest.mark.parametrize("parameter", ["before", "after"])
def test_malformed_cursor_shows_newest_page(app, users, manager_client, automation_id, parameter):
    with app.app_context():
        add_deliveries(users["manager"][2], automation_id, grouped_times(30, 7))
    newest = newest_first(app, automation_id)[:PAGE_SIZE]
    url = f"/automations/{automation_id}"

    for cursor in MALFORMED_CURSORS:
        page = get_ok(manager_client, url, query_string={parameter: cursor, "state": "succeeded"})
        fragment = get_ok(
            manager_client, url, query_string={parameter: cursor}, headers={"HX-Request": "true"}
        )

        assert DELIVERY_ID.findall(page) == newest, cursor
        assert DELIVERY_ID.findall(fragment) == newest, cursor
        assert link(page, "newer") is None, cursor
        poll_url = re.search(r'hx-get="([^"]+)"', fragment).group(1)
        assert "before=" not in poll_url, cursor
        assert "after=" not in poll_url, cursor


@pytest.mark.parametrize(
    ("parameter", "cursor"),
    [
        ("before", "2000-01-01T00:00:00,msg_0"),
        ("after", "2100-01-01T00:00:00,msg_0"),
        ("before", "2100-01-01T00:00:00,msg_0"),
    ],
    ids=["before-oldest", "after-newest", "before-newest"],
)
def test_cursor_beyond_log_end(app, users, manager_client, automation_id, parameter, cursor):
    with app.app_context():
        add_deliveries(users["manager"][2], automation_id, grouped_times(30, 7))
    newest = newest_first(app, automation_id)[:PAGE_SIZE]

    page = get_ok(manager_client, f"/automations/{automation_id}?{parameter}={cursor}")

    assert DELIVERY_ID.findall(page) == newest
    assert link(page, "newer") is None
    assert link(page, "older") is not None


def test_after_oldest_shows_oldest_page(app, users, manager_client, automation_id):
    with app.app_context():
        add_deliveries(users["manager"][2], automation_id, grouped_times(30, 7))
    oldest = newest_first(app, automation_id)[-PAGE_SIZE:]

    page = get_ok(manager_client, f"/automations/{automation_id}?after=2000-01-01T00:00:00,msg_0")

    assert DELIVERY_ID.findall(page) == oldest
    assert link(page, "newer") is not None
    assert link(page, "older") is None


def test_cursor_with_utc_offset(app, users, manager_client, automation_id):
    with app.app_context():
        add_deliveries(users["manager"][2], automation_id, grouped_times(30, 1))
    expected = newest_first(app, automation_id)
    # START + 10 s in UTC, written as 14:00:10 at +02:00: the 10 deliveries before it.
    cursor = "2026-03-01T14:00:10.123456+02:00,msg_0"

    page = get_ok(manager_client, f"/automations/{automation_id}", query_string={"before": cursor})

    assert DELIVERY_ID.findall(page) == expected[-10:]


def test_polling_keeps_the_page(app, users, manager_client, automation_id):
    account_id = users["manager"][2]
    with app.app_context():
        add_deliveries(account_id, automation_id, grouped_times(60, 7))
    first = get_ok(manager_client, f"/automations/{automation_id}")
    second_url = link(first, "older")
    second = get_ok(manager_client, second_url)
    poll_url = html.unescape(re.search(r'hx-get="([^"]+)"', second).group(1))
    first_poll_url = html.unescape(re.search(r'hx-get="([^"]+)"', first).group(1))
    with app.app_context():
        add_deliveries(account_id, automation_id, [START + timedelta(hours=1)] * 3)

    fragment = get_ok(manager_client, poll_url, headers={"HX-Request": "true"})
    first_fragment = get_ok(manager_client, first_poll_url, headers={"HX-Request": "true"})

    assert fragment.strip().startswith('<div id="deliveries"')
    assert DELIVERY_ID.findall(fragment) == DELIVERY_ID.findall(second)
    assert "before=" in poll_url
    assert "before=" not in first_poll_url
    assert "after=" not in first_poll_url
    assert DELIVERY_ID.findall(first_fragment) == newest_first(app, automation_id)[:PAGE_SIZE]


def test_page_keeps_attempts_and_redeliver(app, users, manager_client, automation_id):
    with app.app_context():
        [delivery_id] = add_deliveries(users["manager"][2], automation_id, [START])
        db.session.add(Attempt(delivery_id=delivery_id, number=1, outcome="http_error"))
        db.session.commit()

    page = get_ok(manager_client, f"/automations/{automation_id}")

    assert f'id="attempt-{delivery_id}-1"' in page
    assert f'id="redeliver-{delivery_id}"' in page
    assert "1 delivery<" in page


def test_count_capped(app, users, manager_client, automation_id):
    account_id = users["manager"][2]
    with app.app_context():
        add_deliveries(account_id, automation_id, grouped_times(COUNT_LIMIT, 100))

    at_limit = get_ok(manager_client, f"/automations/{automation_id}")
    with app.app_context():
        add_deliveries(account_id, automation_id, [START + timedelta(hours=1)])
    over_limit = get_ok(manager_client, f"/automations/{automation_id}")

    assert "10,000 deliveries" in at_limit
    assert "10,000+ deliveries" in over_limit


def test_other_deliveries_never_appear(app, users, automation_id):
    acme_id = users["manager"][2]
    globex_id = users["other"][2]
    times = grouped_times(60, 7)
    with app.app_context():
        other_account_automation = make_automation(globex_id, "http://127.0.0.1:9/hook").id
        same_account_automation = make_automation(acme_id, "http://127.0.0.1:9/other").id
        globex_ids = add_deliveries(globex_id, other_account_automation, times)
        sibling_ids = add_deliveries(acme_id, same_account_automation, times)
        add_deliveries(acme_id, automation_id, times)
    expected = newest_first(app, automation_id)
    acme = app.test_client()
    login(acme, users["manager"][1])
    globex = app.test_client()
    login(globex, users["other"][1])

    older_pages, _ = walk(acme, f"/automations/{automation_id}", "older")
    # A cursor made from another account's delivery only places the page.
    foreign_cursor = f"{times[30].isoformat()},{globex_ids[30]}"
    placed = get_ok(acme, f"/automations/{automation_id}", query_string={"before": foreign_cursor})
    denied = globex.get(f"/automations/{automation_id}", query_string={"before": foreign_cursor})

    seen = [delivery for ids in older_pages for delivery in ids]
    assert seen == expected
    assert not set(seen) & set(globex_ids)
    assert not set(seen) & set(sibling_ids)
    assert not set(DELIVERY_ID.findall(placed)) & set(globex_ids)
    assert set(DELIVERY_ID.findall(placed)) <= set(expected)
    assert denied.status_code == 404


def test_home_lists_newest_of_account(app, users, manager_client, automation_id):
    acme_id = users["manager"][2]
    globex_id = users["other"][2]
    with app.app_context():
        other_account_automation = make_automation(globex_id, "http://127.0.0.1:9/hook").id
        # Three equal times, so the id decides the order within each.
        add_deliveries(
            acme_id, automation_id, grouped_times(30, 3), error=lambda n: f"acme-{n:02d}"
        )
        add_deliveries(
            globex_id,
            other_account_automation,
            [START + timedelta(hours=1)] * 5,
            error=lambda n: f"globex-{n:02d}",
        )

    page = get_ok(manager_client, "/")

    assert re.findall(r"acme-\d\d", page) == [f"acme-{n:02d}" for n in range(29, 19, -1)]
    assert "globex-" not in page


def _capture_selects(engine, run):
    """Return the (statement, parameters) of every SELECT on deliveries that `run` sends."""
    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM deliveries" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return statements


def _plan(connection, statement, parameters):
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        return " | ".join(str(row[-1]) for row in rows)
    # PostgreSQL prefers a scan of a small table, so scans are disabled to show
    # which index it would use and whether the order still needs a sort.
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters)
    return " | ".join(str(row[0]) for row in rows)


def test_queries_read_indexes_in_order(app, users, manager_client, automation_id):
    """Every log and home query reads an index in order, with no sort step."""
    with app.app_context():
        add_deliveries(
            users["manager"][2], automation_id, grouped_times(60, 7), states=("failed", "pending")
        )
        engine = db.engine
    requests = ["/"]
    for url in (f"/automations/{automation_id}", f"/automations/{automation_id}?state=failed"):
        first = get_ok(manager_client, url)
        second = get_ok(manager_client, link(first, "older"))
        requests += [url, link(first, "older"), link(second, "newer")]

    statements = _capture_selects(engine, lambda: [get_ok(manager_client, url) for url in requests])

    assert len(statements) > len(requests)
    with engine.connect() as connection:
        for statement, parameters in statements:
            if "ORDER BY deliveries.created_at" not in statement:
                continue
            plan = _plan(connection, statement, parameters)
            assert "TEMP B-TREE" not in plan, f"{statement}\n{plan}"
            assert "Sort" not in plan, f"{statement}\n{plan}"
            assert re.search(r"ix_deliveries_(automation|account)_", plan), f"{statement}\n{plan}"
