"""Pages of an automation's delivery log, newest first, by keyset pagination.

The log is ordered by (created_at, id), newest first. A page is addressed by a
cursor, the (created_at, id) of the row just outside it, so reading any page is
an index range scan whose cost does not grow with the size of the log, unlike
OFFSET. The indexes that serve these queries are `ix_deliveries_automation_created`
and, with a state filter, `ix_deliveries_automation_state` (see pdauto/models.py).
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from .extensions import db
from .models import Delivery

STATES = ("pending", "sending", "succeeded", "failed")
# The page counts at most this many deliveries, so the count costs the same
# however large the log is. Larger logs show this number with a "+".
COUNT_LIMIT = 10_000
# datetime.fromisoformat (Python 3.11 and later) also accepts other separators and trailing
# characters, so the cursor's time must first have this form: ISO 8601 with
# seconds, optional fractions and an optional UTC offset.
_CREATED_AT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
# Delivery ids are "msg_" and hex digits, but ids of other forms are accepted too.
_DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass(frozen=True)
class Cursor:
    """A position in the log: the created_at and id of one delivery."""

    created_at: datetime
    delivery_id: str

    @classmethod
    def of(cls, delivery):
        return cls(delivery.created_at, delivery.id)

    def __str__(self):
        return f"{self.created_at.isoformat()},{self.delivery_id}"


def parse_cursor(text):
    """Parse "<ISO 8601 created_at>,<delivery id>" into a Cursor, or return None if malformed.

    A time with a UTC offset is converted to naive UTC, as the database stores it.
    """
    created_text, _, delivery_id = (text or "").partition(",")
    if not _CREATED_AT.fullmatch(created_text) or not _DELIVERY_ID.fullmatch(delivery_id):
        return None
    try:
        created_at = datetime.fromisoformat(created_text)
        if created_at.tzinfo is not None:
            created_at = created_at.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None
    return Cursor(created_at, delivery_id)


@dataclass(frozen=True)
class LogPage:
    """One page of deliveries, newest first, and the cursors of its neighbours.

    `newer` and `older` are None where no delivery lies beyond that end of the page.
    `before` or `after` is the cursor the page was read with, None on the newest page.
    """

    deliveries: list
    newer: Cursor | None
    older: Cursor | None
    total: int
    before: Cursor | None = None
    after: Cursor | None = None

    @property
    def total_text(self):
        """The count as shown: "10,000+" once it passes COUNT_LIMIT."""
        if self.total > COUNT_LIMIT:
            return f"{COUNT_LIMIT:,}+"
        return f"{self.total:,}"

    @property
    def position(self):
        """The query arguments that read this page again, for the page's polling."""
        if self.before is not None:
            return {"before": str(self.before)}
        if self.after is not None:
            return {"after": str(self.after)}
        return {}


def read_page(automation_id, size, state="", before=None, after=None):
    """Return the page of `size` deliveries of the automation older than `before`,
    else newer than `after`, else the newest ones.

    `state` filters by delivery state (one of STATES, or "" for all). A cursor page
    that would be empty, and a newer page that reaches the newest delivery, are
    returned as the newest page, which the browser then polls for new deliveries.
    """
    query = db.select(Delivery).where(Delivery.automation_id == automation_id)
    if state:
        query = query.where(Delivery.state == state)
    total = _capped_count(query)

    if before is not None:
        # Fetching one row more than the page shows whether an older page exists.
        rows = _scalars(query.where(_older_than(before)).order_by(*_NEWEST_FIRST), size + 1)
        if rows:
            newer = Cursor.of(rows[0])
            if not _exists(query.where(_newer_than(newer))):
                newer = None
            older = Cursor.of(rows[size - 1]) if len(rows) > size else None
            return LogPage(rows[:size], newer, older, total, before=before)
    elif after is not None:
        rows = _scalars(query.where(_newer_than(after)).order_by(*_OLDEST_FIRST), size + 1)
        if len(rows) > size:
            rows = list(reversed(rows[:size]))
            older = Cursor.of(rows[-1])
            if not _exists(query.where(_older_than(older))):
                older = None
            return LogPage(rows, Cursor.of(rows[0]), older, total, after=after)

    rows = _scalars(query.order_by(*_NEWEST_FIRST), size + 1)
    older = Cursor.of(rows[size - 1]) if len(rows) > size else None
    return LogPage(rows[:size], None, older, total)


_NEWEST_FIRST = (Delivery.created_at.desc(), Delivery.id.desc())
_OLDEST_FIRST = (Delivery.created_at.asc(), Delivery.id.asc())


def _older_than(cursor):
    return _order_key() < _cursor_key(cursor)


def _newer_than(cursor):
    return _order_key() > _cursor_key(cursor)


def _order_key():
    # A row value, which SQLite has since 3.15. SQLite 3.40 and PostgreSQL 15 read
    # a comparison with it as a range of an index ending with (created_at, id).
    return db.tuple_(Delivery.created_at, Delivery.id)


def _cursor_key(cursor):
    return db.tuple_(
        db.literal(cursor.created_at, Delivery.created_at.type),
        db.literal(cursor.delivery_id, Delivery.id.type),
    )


def _scalars(query, limit):
    return db.session.scalars(query.limit(limit)).all()


def _exists(query):
    return db.session.scalar(query.with_only_columns(Delivery.id).limit(1)) is not None


def _capped_count(query):
    """Count the rows of `query`, stopping after COUNT_LIMIT + 1."""
    capped = query.with_only_columns(Delivery.id).limit(COUNT_LIMIT + 1).subquery()
    return db.session.scalar(db.select(db.func.count()).select_from(capped))
