"""Failure emails: one row per failed attempt, sent to the failure address in batches.

Each address gets at most 5 emails in any 5 minutes and 50 in any 24 hours,
counted in Redis across every process. A notice the limit holds back stays
pending and is summed up in the next email, which is scheduled for the moment
the window reopens. Only emails that the SMTP server accepted count, and an
email whose outcome is unknown is never sent again.

Notice states: `pending` (waiting), `sending` (claimed by one process for one
email), `sent` (accepted by the server) and `unknown` (the connection broke
after the server took the message data, or the sending process died).
"""

import logging
import math
import re
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid, parseaddr

from flask import current_app, render_template
from flask_mail import Message
from sqlalchemy import func, select, update

from . import metrics, queue
from .extensions import db, mail
from .models import Automation, FailureNotice, utcnow
from .throttle import RollingLimiter
from .webhooks import mask_url

log = logging.getLogger(__name__)

# (maximum emails, window in seconds) per recipient address.
EMAIL_LIMITS = ((5, 300), (50, 86400))

# Delays before retrying after the SMTP server was unreachable or rejected the
# message: 30 s, doubling per consecutive failure, at most one hour.
SMTP_RETRY_FIRST_SECONDS = 30
SMTP_RETRY_MAX_SECONDS = 3600

# RQ deletes a scheduled job `ttl` seconds after scheduling it, and queue.py
# sets one day. So a later send is scheduled at most this far ahead, and if the
# window is still closed by then, that run schedules the next one.
MAX_SCHEDULE_AHEAD_SECONDS = 12 * 3600

# A notice left in `sending` this long belongs to a process that died while it
# sent, so the email may or may not have gone out.
SENDING_LEASE = timedelta(minutes=15)

# The summary names at most this many other automations.
SUMMARY_AUTOMATIONS = 20

SUBJECT_NAME_LENGTH = 120

KIND_TITLES = {
    "failure": "Webhook failed",
    "gone": "Webhook URL gone, automation paused",
    "step_failure": "Automation step failed",
}

# Status strings returned by send_pending_notices.
SENT = "sent"
HELD = "held"
NOTHING = "nothing"
SMTP_DOWN = "smtp_down"
REJECTED = "rejected"
UNKNOWN = "unknown"

# Server replies that prove the message was not taken, so it can be sent again.
# NOTE: a permanent rejection (5xx) is treated like a temporary one, so it is
# retried hourly for as long as the address has pending notices.
REJECTION_ERRORS = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPDataError,
    smtplib.SMTPHeloError,
    smtplib.SMTPNotSupportedError,
)
SMTP_ERRORS = (OSError, smtplib.SMTPException)

_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def normalize_address(address):
    """Return the address stripped and lower-cased; raise ValueError if invalid."""
    normalized = address.strip().lower()
    if (
        not normalized
        or "@" not in normalized
        or _HEADER_BREAKS.search(normalized)
        or any(character.isspace() for character in normalized)
    ):
        raise ValueError(f"invalid failure email address {address!r}")
    return normalized


def failure_limiter():
    """Return the limiter of failure emails per address, on the app's Redis."""
    return RollingLimiter(queue.get_redis(), queue.redis_key("notices", "limit"), EMAIL_LIMITS)


def record_failure(
    *,
    account_id,
    automation_id,
    address,
    url_masked,
    error,
    occurred_at,
    delivery_id=None,
    attempt_id=None,
    kind="failure",
) -> FailureNotice:
    """Add a pending notice to the current session.

    The caller commits, then calls queue.enqueue_notices(address). `url_masked`
    should already have its credentials masked; mask_url runs again here because
    the email must never carry a password. Raises ValueError for an invalid
    address.
    """
    notice = FailureNotice(
        account_id=account_id,
        automation_id=automation_id,
        address=normalize_address(address),
        delivery_id=delivery_id,
        attempt_id=attempt_id,
        kind=kind,
        url=mask_url(url_masked or "")[:2048],
        error=(error or "")[:500],
        occurred_at=_naive_utc(occurred_at),
        state="pending",
    )
    db.session.add(notice)
    return notice


def send_pending_notices(address: str, now: datetime | None = None) -> str:
    """Send one email about the address's pending notices, if the limit allows.

    Returns SENT, HELD (a later send is scheduled), NOTHING, SMTP_DOWN or
    REJECTED (both keep the notices pending and schedule a retry), or UNKNOWN
    (the outcome is unknown, so the notices are not sent again).
    """
    address = normalize_address(address)
    now = _naive_utc(now) if now is not None else utcnow()
    now_ts = _timestamp(now)
    _expire_stale_claims(address, now)

    pending_ids = _pending_ids(address)
    if not pending_ids:
        return NOTHING

    limiter = failure_limiter()
    reservation = limiter.reserve(address, now=now_ts)
    if not reservation.allowed:
        log.info(
            "failure email to %s held back until %s: notices %s",
            address,
            _format_time(_from_timestamp(reservation.retry_at)),
            describe_ids(pending_ids),
        )
        _schedule(address, reservation.retry_at, now_ts)
        metrics.record_emails(HELD)
        return HELD

    # Connect before claiming, so an unreachable server leaves nothing claimed.
    connection = _connect(address)
    if connection is None:
        limiter.release(address, reservation.token)
        _schedule_smtp_retry(address, now_ts)
        metrics.record_emails(SMTP_DOWN)
        return SMTP_DOWN

    try:
        status = _claim_and_send(connection, address, pending_ids, now)
    finally:
        _close(connection)

    if status in (REJECTED, NOTHING):
        limiter.release(address, reservation.token)
    if status == REJECTED:
        _schedule_smtp_retry(address, now_ts)
    if status == SENT:
        queue.get_redis().delete(_smtp_failures_key(address))
    if status != NOTHING:
        metrics.record_emails(status)
    return status


def _claim_and_send(connection, address, pending_ids, now):
    message_id = make_msgid(domain=_sender_domain())
    claimed = _claim(address, max(pending_ids), message_id, now)
    if not claimed:
        # Another process took these notices between the query and the claim.
        return NOTHING

    try:
        summary = _summarize(address, message_id)
        message = _build_message(address, summary, message_id)
    except Exception:
        # Nothing went out, so the notices wait for the next try.
        db.session.rollback()
        _finish_claim(address, message_id, state="pending", sent_at=None)
        raise

    outcome, error = _send(connection, message)

    if outcome == SENT:
        _finish_claim(address, message_id, state="sent", sent_at=now)
        log.info(
            "failure email %s sent to %s: notices %s",
            message_id,
            address,
            describe_ids(summary.ids),
        )
    elif outcome == REJECTED:
        _finish_claim(address, message_id, state="pending", sent_at=None)
        log.warning(
            "SMTP server rejected failure email to %s, will retry: notices %s: %s",
            address,
            describe_ids(summary.ids),
            error,
        )
    else:
        _finish_claim(address, message_id, state="unknown", sent_at=now)
        log.warning(
            "failure email %s to %s may or may not have arrived, not sending it"
            " again: notices %s: %s",
            message_id,
            address,
            describe_ids(summary.ids),
            error,
        )
    return outcome


def _pending_ids(address):
    return db.session.scalars(
        select(FailureNotice.id)
        .where(FailureNotice.address == address, FailureNotice.state == "pending")
        .order_by(FailureNotice.id)
    ).all()


def _expire_stale_claims(address, now):
    """Mark notices whose sending process died as `unknown`."""
    stale = (
        FailureNotice.address == address,
        FailureNotice.state == "sending",
        FailureNotice.sent_at < now - SENDING_LEASE,
    )
    stale_ids = db.session.scalars(select(FailureNotice.id).where(*stale)).all()
    if not stale_ids:
        return

    db.session.execute(
        update(FailureNotice)
        .where(*stale)
        .values(state="unknown")
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    log.warning(
        "failure notices %s to %s were left in sending by a stopped process,"
        " so their email may or may not have gone out; marked unknown",
        describe_ids(stale_ids),
        address,
    )


def _claim(address, max_id, message_id, now):
    """Move pending notices up to `max_id` to `sending` for one email.

    The UPDATE only takes rows still pending, so two processes never claim the
    same notice, and the claim is committed before any email is sent. `sent_at`
    contains the claim time until the email is accepted.
    """
    result = db.session.execute(
        update(FailureNotice)
        .where(
            FailureNotice.address == address,
            FailureNotice.state == "pending",
            FailureNotice.id <= max_id,
        )
        .values(state="sending", email_message_id=message_id, sent_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return result.rowcount


def _finish_claim(address, message_id, state, sent_at):
    values = {"state": state, "sent_at": sent_at}
    if state == "pending":
        values["email_message_id"] = None
    db.session.execute(
        update(FailureNotice)
        .where(
            FailureNotice.address == address,
            FailureNotice.state == "sending",
            FailureNotice.email_message_id == message_id,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


@dataclass
class Summary:
    """The notices claimed for one email: the newest in full, the others counted."""

    newest: FailureNotice
    ids: list
    others_count: int
    others_since: datetime | None
    # (automation, failures, latest failure time), most recent first.
    other_automations: list
    unlisted_automations: int


def _summarize(address, message_id):
    claimed = (
        FailureNotice.address == address,
        FailureNotice.state == "sending",
        FailureNotice.email_message_id == message_id,
    )
    newest = db.session.scalars(
        select(FailureNotice)
        .where(*claimed)
        .order_by(FailureNotice.occurred_at.desc(), FailureNotice.id.desc())
        .limit(1)
    ).one()
    ids = db.session.scalars(
        select(FailureNotice.id).where(*claimed).order_by(FailureNotice.id)
    ).all()

    others = (*claimed, FailureNotice.id != newest.id)
    others_since = db.session.scalar(select(func.min(FailureNotice.occurred_at)).where(*others))
    latest = func.max(FailureNotice.occurred_at)
    rows = db.session.execute(
        select(Automation, func.count(FailureNotice.id), latest)
        .select_from(FailureNotice)
        .join(Automation, Automation.id == FailureNotice.automation_id)
        .where(*others)
        .group_by(Automation.id)
        .order_by(latest.desc())
    ).all()

    return Summary(
        newest=newest,
        ids=list(ids),
        others_count=len(ids) - 1,
        others_since=others_since,
        other_automations=[tuple(row) for row in rows[:SUMMARY_AUTOMATIONS]],
        unlisted_automations=max(0, len(rows) - SUMMARY_AUTOMATIONS),
    )


def _build_message(address, summary, message_id):
    newest = summary.newest
    automation = newest.automation
    title = KIND_TITLES.get(newest.kind, newest.kind.replace("_", " ").capitalize())
    name = header_text(automation.name)[:SUBJECT_NAME_LENGTH]
    subject = f"{title}: {name}"
    if summary.others_count:
        subject += f", and {_count_failures(summary.others_count, 'more ')}"

    body = render_template(
        "email/failure.txt",
        title=title,
        notice=newest,
        automation=automation,
        automation_link=automation_link(automation.id),
        occurred_at=_format_time(newest.occurred_at),
        others_count=summary.others_count,
        others_since=_format_time(summary.others_since),
        other_automations=[
            {
                "name": other.name,
                "count": count,
                "latest": _format_time(latest),
                "link": automation_link(other.id),
            }
            for other, count, latest in summary.other_automations
        ],
        unlisted_automations=summary.unlisted_automations,
        limits=_describe_limits(EMAIL_LIMITS),
    )
    message = Message(
        subject=header_text(subject),
        recipients=[address],
        body=body,
        # Asks mail systems not to send vacation or other automatic replies.
        extra_headers={"Auto-Submitted": "auto-generated"},
    )
    message.msgId = message_id
    return message


def header_text(value):
    """Return `value` on one line, so that user text cannot start a new header."""
    return " ".join(_HEADER_BREAKS.sub(" ", value or "").split())


def automation_link(automation_id):
    base_url = current_app.config["PDAUTO_BASE_URL"].rstrip("/")
    return f"{base_url}/automations/{automation_id}"


def _connect(address):
    """Open an SMTP connection, or log and return None if the server is unreachable."""
    connection = mail.connect()
    try:
        # Entering the connection opens the SMTP session. _close ends it, so
        # that a QUIT on a broken connection cannot raise over the outcome.
        # NOTE: Flask-Mail 0.10 opens smtplib.SMTP without a timeout, so a
        # server that accepts TCP and never greets blocks until the job timeout.
        connection.__enter__()
    except SMTP_ERRORS as error:
        log.warning(
            "could not connect to SMTP server %s:%s for failure email to %s: %s",
            current_app.config["MAIL_SERVER"],
            current_app.config["MAIL_PORT"],
            address,
            error,
        )
        return None

    if connection.host is not None and connection.host.sock is not None:
        connection.host.sock.settimeout(current_app.config["MAIL_TIMEOUT_SECONDS"])
    return connection


def _send(connection, message):
    """Send on an open connection; return (SENT, None) or (REJECTED|UNKNOWN, error).

    REJECTED means the server replied that it did not take the message. Any
    other error may have come after the server took it, so it is UNKNOWN.
    """
    try:
        connection.send(message)
    except REJECTION_ERRORS as error:
        return REJECTED, error
    except SMTP_ERRORS as error:
        return UNKNOWN, error
    return SENT, None


def _close(connection):
    host = connection.host
    if host is None:
        return
    try:
        host.quit()
    except SMTP_ERRORS:
        # The email's outcome is already decided; only free the socket.
        host.close()


def _schedule(address, at_ts, now_ts):
    """Schedule the next send for this address at `at_ts` (Unix seconds)."""
    # RQ keeps whole seconds, so round up, or the job could run just before
    # the window reopens and find it still closed.
    at_ts = math.ceil(min(at_ts, now_ts + MAX_SCHEDULE_AHEAD_SECONDS))
    queue.enqueue_notices(address, at=_from_timestamp(at_ts, aware=True))


def _schedule_smtp_retry(address, now_ts):
    client = queue.get_redis()
    key = _smtp_failures_key(address)
    pipeline = client.pipeline()
    pipeline.incr(key)
    pipeline.expire(key, 86400)
    failures, _ = pipeline.execute()

    delay = SMTP_RETRY_FIRST_SECONDS * 2 ** min(failures - 1, 16)
    delay = min(delay, SMTP_RETRY_MAX_SECONDS)
    log.info(
        "failure email to %s not sent (SMTP failure %d in a row), retrying in %d s",
        address,
        failures,
        delay,
    )
    _schedule(address, now_ts + delay, now_ts)


def _smtp_failures_key(address):
    return queue.redis_key("notices", "smtp-failures", address)


def _sender_domain():
    sender = current_app.config.get("MAIL_DEFAULT_SENDER") or ""
    if isinstance(sender, tuple):
        sender = sender[1]
    _, sender_address = parseaddr(sender)
    return sender_address.rpartition("@")[2] or "localhost"


def _count_failures(count, adjective=""):
    noun = "failure" if count == 1 else "failures"
    return f"{count} {adjective}{noun}"


def _describe_limits(limits):
    """Return the limits in words, such as "5 emails in any 5 minutes"."""
    phrases = []
    for index, (limit, seconds) in enumerate(limits):
        noun = " emails" if index == 0 else ""
        phrases.append(f"{limit}{noun} in any {_describe_span(seconds)}")
    return " and ".join(phrases)


def _describe_span(seconds):
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def describe_ids(ids, limit=20):
    """Return ids as a comma-separated list, the first `limit` of them and a count of the rest."""
    text = ", ".join(str(notice_id) for notice_id in ids[:limit])
    if len(ids) > limit:
        text += f" and {len(ids) - limit} more"
    return text


def _naive_utc(moment):
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _timestamp(naive_utc):
    return naive_utc.replace(tzinfo=UTC).timestamp()


def _from_timestamp(timestamp, aware=False):
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment if aware else moment.replace(tzinfo=None)


def _format_time(naive_utc):
    if naive_utc is None:
        return ""
    return naive_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
