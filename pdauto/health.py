"""Automation health: success rates over recent days, and which automations need attention."""

from dataclasses import dataclass, field
from datetime import timedelta

from .extensions import db
from .models import Delivery, utcnow

DAYS = 7
# Below this success rate an automation that still works is shown as degraded.
DEGRADED_BELOW = 0.95


@dataclass
class Health:
    """One automation's deliveries over the last DAYS days, and its status in a word."""

    status: str = "idle"
    succeeded: int = 0
    attempted: int = 0
    # (day as YYYY-MM-DD, succeeded, attempted), oldest first, one entry per day.
    days: list = field(default_factory=list)

    @property
    def rate(self):
        return self.succeeded / self.attempted if self.attempted else None

    @property
    def needs_attention(self):
        return self.status in ("failing", "degraded", "paused")


def health_by_automation(automations, now=None):
    """Return {automation id: Health} for `automations`, all of one account."""
    now = now or utcnow()
    start = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day_names = [(start + timedelta(days=n)).strftime("%Y-%m-%d") for n in range(DAYS)]
    ids = [automation.id for automation in automations]
    counts = {}
    if ids:
        day = db.func.date(Delivery.created_at)
        rows = db.session.execute(
            db.select(Delivery.automation_id, day, Delivery.state, db.func.count())
            .where(
                Delivery.automation_id.in_(ids),
                Delivery.created_at >= start,
                Delivery.attempt_count > 0,
            )
            .group_by(Delivery.automation_id, day, Delivery.state)
        ).all()
        for automation_id, day_value, state, count in rows:
            key = (automation_id, str(day_value)[:10])
            succeeded, attempted = counts.get(key, (0, 0))
            counts[key] = (succeeded + (count if state == "succeeded" else 0), attempted + count)

    result = {}
    for automation in automations:
        health = Health()
        for name in day_names:
            succeeded, attempted = counts.get((automation.id, name), (0, 0))
            health.days.append((name, succeeded, attempted))
            health.succeeded += succeeded
            health.attempted += attempted
        health.status = _status(automation, health)
        result[automation.id] = health
    return result


def _status(automation, health):
    if automation.state == "paused":
        return "paused"
    if automation.failing_since is not None:
        return "failing"
    if health.attempted == 0:
        return "idle"
    return "healthy" if health.rate >= DEGRADED_BELOW else "degraded"
