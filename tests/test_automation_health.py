"""Check automation health: success rates per day, badges and the needs-attention list."""

import re
from datetime import timedelta

from pdauto.extensions import db
from pdauto.health import health_by_automation
from pdauto.models import Delivery, Event, utcnow
from tests.factories import make_automation

NOW = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)


def add_deliveries(automation, days_ago, succeeded, failed):
    for state in ["succeeded"] * succeeded + ["failed"] * failed:
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
                created_at=NOW - timedelta(days=days_ago),
            )
        )
    db.session.commit()


def test_rates_per_day(app, users):
    with app.app_context():
        automation = make_automation(users["manager"][2], "http://127.0.0.1:9/hook")
        add_deliveries(automation, days_ago=0, succeeded=3, failed=1)
        add_deliveries(automation, days_ago=2, succeeded=2, failed=0)
        add_deliveries(automation, days_ago=9, succeeded=0, failed=5)

        health = health_by_automation([automation], now=NOW)[automation.id]

    assert len(health.days) == 7
    assert health.days[-1][1:] == (3, 4)
    assert health.days[-3][1:] == (2, 2)
    assert health.succeeded == 5
    assert health.attempted == 6
    assert health.status == "degraded"


def test_status_words(app, users):
    account_id = users["manager"][2]
    with app.app_context():
        idle = make_automation(account_id, "http://127.0.0.1:9/a", name="Idle")
        healthy = make_automation(account_id, "http://127.0.0.1:9/b", name="Healthy")
        add_deliveries(healthy, days_ago=1, succeeded=20, failed=0)
        failing = make_automation(account_id, "http://127.0.0.1:9/c", name="Failing")
        failing.failing_since = NOW - timedelta(hours=3)
        paused = make_automation(account_id, "http://127.0.0.1:9/d", name="Paused")
        paused.active = False
        paused.paused_at = NOW
        db.session.commit()

        health = health_by_automation([idle, healthy, failing, paused], now=NOW)
        statuses = {
            automation.name: health[automation.id].status
            for automation in [idle, healthy, failing, paused]
        }

    assert statuses == {
        "Idle": "idle",
        "Healthy": "healthy",
        "Failing": "failing",
        "Paused": "paused",
    }


def test_home_lists_what_needs_attention(app, users, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, "http://127.0.0.1:9/a", name="Quiet one")
        failing = make_automation(account_id, "http://127.0.0.1:9/b", name="Broken one")
        failing.failing_since = utcnow() - timedelta(hours=3)
        db.session.commit()
        add_deliveries(failing, days_ago=0, succeeded=1, failed=3)

    home = manager_client.get("/").text
    listing = manager_client.get("/automations/").text

    attention = re.search(r'<section class="card attention".*?</section>', home, re.S).group(0)
    assert "Broken one" in attention
    assert "Quiet one" not in attention
    assert "failing since" in attention
    assert "25.0 %" in home
    assert 'class="success-chart"' in home
    assert "health-failing" in listing
    assert "health-idle" in listing


def test_other_account_not_counted(app, users):
    with app.app_context():
        mine = make_automation(users["manager"][2], "http://127.0.0.1:9/a")
        theirs = make_automation(users["other"][2], "http://127.0.0.1:9/b")
        add_deliveries(theirs, days_ago=0, succeeded=0, failed=4)

        health = health_by_automation([mine], now=NOW)

    assert list(health) == [mine.id]
    assert health[mine.id].attempted == 0
