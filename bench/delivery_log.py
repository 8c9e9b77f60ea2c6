"""Measurement f: the delivery log page with 1,000 attempts vs 1,000,000.

The rows are written with bulk INSERTs (executemany in chunks), one event,
one succeeded delivery and one attempt per webhook, the shape that a normal
day of successful deliveries leaves behind.
"""

import json
import statistics
import time
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import insert

from .environment import make_app, migrate_database
from .measurements import Result

CHUNK_ROWS = 10_000
PAGE_REPEATS = 20
START = datetime(2026, 1, 1)


def measure_delivery_log(bench):
    from pdauto.views.automations import PAGE_SIZE

    sizes = bench.sizes
    bench.ensure_workers(0)
    small_log = _DeliveryLog(_migrated_app(bench, "log_small"))
    large_log = _DeliveryLog(_migrated_app(bench, "log_large"))
    small_viewed = small_log.add_automation("Viewed")
    small_log.fill(small_viewed, sizes.log_small)
    large_viewed = large_log.add_automation("Viewed")
    started = time.perf_counter()
    large_log.fill(large_viewed, sizes.log_large)
    fill_seconds = time.perf_counter() - started
    large_other = large_log.add_automation("Other")
    large_log.fill(large_other, sizes.log_small)

    # Alternating the two logs' requests spreads any change in machine load
    # over both medians.
    deep_page = sizes.log_large // 2 // PAGE_SIZE
    deep_cursor = large_log.cursor_before_page(large_viewed, deep_page, PAGE_SIZE)
    deep_request = large_log.page_request(large_viewed, before=deep_cursor)
    # Only a page after the first has a Newer link, so this shows the cursor was used.
    if 'id="deliveries-newer"' not in deep_request().text:
        raise RuntimeError(f"the page before {deep_cursor} has no Newer link")
    small, large, spread, deep, filtered = _median_seconds_interleaved(
        [
            small_log.page_request(small_viewed),
            large_log.page_request(large_viewed),
            large_log.page_request(large_other),
            deep_request,
            large_log.page_request(large_viewed, state="failed"),
        ]
    )
    fragment, home = _median_seconds_interleaved(
        [large_log.page_request(large_viewed, fragment=True), large_log.home_request()]
    )
    size_mib = bench.environment.database_path("log_large").stat().st_size / 2**20
    for log in (small_log, large_log):
        log.dispose()

    ratio = large / small
    return [
        Result(
            "f",
            f"delivery log page 1, {sizes.log_small:,} vs {sizes.log_large:,} attempts in "
            "the viewed automation",
            f"{large * 1000:.1f} ms",
            f"{small * 1000:.1f} ms",
            ratio=ratio,
            target="≤ 2",
            met=ratio <= 2,
            notes=[
                f"filled {sizes.log_large:,} events, deliveries and attempts each in "
                f"{fill_seconds:.1f} s ({sizes.log_large / fill_seconds:,.0f} webhooks/s); "
                f"the SQLite file is {size_mib:,.0f} MiB",
                f"with {sizes.log_large + sizes.log_small:,} attempts in the database: page 1 "
                f"of another automation with {sizes.log_small:,} of them {spread * 1000:.1f} ms "
                f"(ratio {spread / small:.2f}), page {deep_page:,} of the large one "
                f"{deep * 1000:.1f} ms (ratio {deep / small:.2f})",
                f"the large log filtered to its failed deliveries, of which it has none, "
                f"{filtered * 1000:.1f} ms",
                f"the large log's htmx fragment, which the page polls every 3 s, "
                f"{fragment * 1000:.1f} ms; the home page {home * 1000:.1f} ms",
                f"median of {PAGE_REPEATS} GETs each through the Flask test client, logged in, "
                "the pages' requests alternating",
            ],
        )
    ]


def _migrated_app(bench, name):
    app = make_app(bench.environment.database_url(name))
    migrate_database(app)
    return app


def _median_seconds_interleaved(requests):
    """Time each request function PAGE_REPEATS times, alternating; return their medians."""
    for request in requests:
        for _ in range(3):
            request()
    times = [[] for _ in requests]
    for _ in range(PAGE_REPEATS):
        for index, request in enumerate(requests):
            started = time.perf_counter()
            request()
            times[index].append(time.perf_counter() - started)
    return [statistics.median(values) for values in times]


class _DeliveryLog:
    """An account, a logged-in manager and automations whose log is filled in bulk."""

    def __init__(self, app):
        from pdauto.extensions import db
        from pdauto.models import Account, User

        self.app = app
        with app.app_context():
            account = Account(name="Bench")
            user = User(account=account, email="manager@bench.example.com", role="manager")
            user.set_password("bench password")
            db.session.add_all([account, user])
            db.session.commit()
            self.account_id = account.id
            user_id = user.id
        # Requests run outside any app context of ours, so each gets a fresh
        # session, as in production.
        self.client = app.test_client()
        with self.client.session_transaction() as session:
            session["_user_id"] = str(user_id)
            session["_fresh"] = True
        self.next_event_id = 1
        self.created = 0

    def add_automation(self, name):
        from pdauto.extensions import db
        from pdauto.models import Action, Automation

        with self.app.app_context():
            automation = Automation(
                account_id=self.account_id, name=name, event_model="person", event_action="created"
            )
            automation.actions.append(Action(kind="call_api", url="http://127.0.0.1:9/hook"))
            db.session.add(automation)
            db.session.commit()
            return automation.id, automation.actions[0].id

    def fill(self, automation, count):
        """Insert `count` webhooks of `automation` in chunks, each chunk one transaction."""
        from pdauto.extensions import db
        from pdauto.models import Attempt, Delivery, Event

        automation_id, action_id = automation
        with self.app.app_context():
            engine = db.engine
        for start in range(0, count, CHUNK_ROWS):
            size = min(CHUNK_ROWS, count - start)
            rows = [self._rows(automation_id, action_id) for _ in range(size)]
            with engine.begin() as connection:
                connection.execute(insert(Event.__table__), [row[0] for row in rows])
                connection.execute(insert(Delivery.__table__), [row[1] for row in rows])
                connection.execute(insert(Attempt.__table__), [row[2] for row in rows])

    def _rows(self, automation_id, action_id):
        event_id = self.next_event_id
        self.next_event_id += 1
        self.created += 1
        at = START + timedelta(seconds=self.created)
        delivery_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "trigger": "Person created",
                "event_model": "person",
                "event_action": "created",
                "event_model_id": event_id,
                "event_id": event_id,
                "occurred_at": at.isoformat() + "Z",
            },
            separators=(",", ":"),
        )
        event = {
            "id": event_id,
            "account_id": self.account_id,
            "model": "person",
            "action": "created",
            "record_id": event_id,
            "changes": {"first_name": [None, "Ada"], "last_name": [None, "Lovelace"]},
            "occurred_at": at,
            "dispatched_at": at,
        }
        delivery = {
            "id": delivery_id,
            "account_id": self.account_id,
            "event_id": event_id,
            "action_id": action_id,
            "automation_id": automation_id,
            "state": "succeeded",
            "attempt_count": 1,
            "next_attempt_at": at,
            "lease_expires_at": None,
            "last_status": 204,
            "last_error": "",
            "created_at": at,
            "completed_at": at,
        }
        attempt = {
            "delivery_id": delivery_id,
            "number": 1,
            "started_at": at,
            "duration_ms": 1.2,
            "outcome": "success",
            "succeeded": True,
            "request_url": "http://127.0.0.1:9/hook",
            "request_headers": {
                "Host": "127.0.0.1:9",
                "Content-Type": "application/json",
                "User-Agent": "pdauto/0.1.0",
                "webhook-id": delivery_id,
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
                "Content-Length": str(len(body)),
            },
            "request_body": body,
            "response_status": 204,
            "response_headers": {"Server": "receiver", "Date": "Thu, 01 Jan 2026 00:00:00 GMT"},
            "response_body": "",
            "error": "",
        }
        return event, delivery, attempt

    def cursor_before_page(self, automation, page, page_size):
        """Return the `before` cursor of page `page` (from 2) of the automation's log.

        It is the (created_at, id) of the last delivery of the page before, found
        once with OFFSET, which is what the Older links lead to page after page.
        """
        from pdauto.extensions import db
        from pdauto.models import Delivery

        automation_id, _ = automation
        with self.app.app_context():
            created_at, delivery_id = db.session.execute(
                db.select(Delivery.created_at, Delivery.id)
                .where(Delivery.automation_id == automation_id)
                .order_by(Delivery.created_at.desc(), Delivery.id.desc())
                .offset((page - 1) * page_size - 1)
                .limit(1)
            ).one()
        return f"{created_at.isoformat()},{delivery_id}"

    def page_request(self, automation, before=None, state=None, fragment=False):
        """Return a function that GETs the automation's delivery log and checks the status."""
        automation_id, _ = automation
        query = {name: value for name, value in (("before", before), ("state", state)) if value}
        url = f"/automations/{automation_id}"
        if query:
            url += "?" + urlencode(query)
        headers = {"HX-Request": "true"} if fragment else {}
        return lambda: self._get(url, headers)

    def home_request(self):
        return lambda: self._get("/", {})

    def _get(self, url, headers):
        response = self.client.get(url, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} returned status {response.status_code}, expected 200")
        return response

    def dispose(self):
        from pdauto.extensions import db

        with self.app.app_context():
            db.engine.dispose()
