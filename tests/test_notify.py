"""Failure emails: the per-address limit, summaries, and SMTP trouble.

Real Redis, a real SMTP server on loopback (aiosmtpd) and injected time: the
tests pass `now` instead of sleeping.
"""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from pdauto import notify, queue
from pdauto.models import Account, Automation, FailureNotice

START = datetime(2026, 1, 5, 8, 0, 0)  # naive UTC, as the database stores it
ADDRESS = "ops@acme.test"
URL = "https://hooks.acme.test/in?token=****"


@pytest.fixture
def account(db):
    account = Account(name="Acme")
    db.session.add(account)
    db.session.commit()
    return account


def make_automation(db, account, name="Deal won"):
    automation = Automation(
        account_id=account.id, name=name, event_model="deal", event_action="updated"
    )
    db.session.add(automation)
    db.session.commit()
    return automation


@pytest.fixture
def automation(db, account):
    return make_automation(db, account)


def add_failure(db, automation, at, address=ADDRESS, error="HTTP 500 Internal Server Error"):
    """Record one failed attempt and commit it, as the delivery job does."""
    notice = notify.record_failure(
        account_id=automation.account_id,
        automation_id=automation.id,
        address=address,
        url_masked=URL,
        error=error,
        occurred_at=at,
    )
    db.session.commit()
    return notice


def add_failure_and_send(db, automation, at, address=ADDRESS):
    add_failure(db, automation, at, address=address)
    return notify.send_pending_notices(address, now=at)


def states(db):
    notices = db.session.scalars(db.select(FailureNotice).order_by(FailureNotice.id))
    return [notice.state for notice in notices]


def limiter_count(address, at):
    return notify.failure_limiter().count(address, now=at.replace(tzinfo=UTC).timestamp())


def scheduled_times(address):
    """Return when sends for `address` are scheduled in RQ, earliest first."""
    registry = ScheduledJobRegistry(queue=queue.get_queue("notices"))
    jobs = Job.fetch_many(registry.get_job_ids(), connection=queue.get_redis())
    return sorted(
        registry.get_scheduled_time(job)
        for job in jobs
        if job is not None and list(job.args) == [address]
    )


def aware(naive_utc):
    return naive_utc.replace(tzinfo=UTC)


# The limit


def test_burst_sends_five_emails(db, automation, smtp_server):
    statuses = [
        add_failure_and_send(db, automation, START + timedelta(seconds=3 * i)) for i in range(20)
    ]

    assert len(smtp_server.messages) == 5
    assert statuses == [notify.SENT] * 5 + [notify.HELD] * 15


def test_burst_keeps_held_notices_pending(db, automation, smtp_server):
    for i in range(20):
        add_failure_and_send(db, automation, START + timedelta(seconds=3 * i))

    assert states(db) == ["sent"] * 5 + ["pending"] * 15


def test_more_go_after_five_minutes(db, automation, smtp_server):
    for i in range(20):
        add_failure_and_send(db, automation, START + timedelta(seconds=3 * i))

    status = add_failure_and_send(db, automation, START + timedelta(seconds=301))

    assert status == notify.SENT
    assert len(smtp_server.messages) == 6


def test_next_email_sums_up_held_failures(db, automation, smtp_server):
    for i in range(20):
        add_failure_and_send(db, automation, START + timedelta(seconds=3 * i))

    add_failure_and_send(db, automation, START + timedelta(seconds=301))
    summary = smtp_server.messages[-1]

    assert "and 15 more failures since 2026-01-05 08:00:15 UTC" in summary.text
    assert summary.subject == "Webhook failed: Deal won, and 15 more failures"
    assert states(db) == ["sent"] * 21


def test_day_cap_over_simulated_day(db, automation, smtp_server):
    """One failure every two minutes for a day gives 50 emails, then more."""
    day = [START + timedelta(minutes=2 * i) for i in range(24 * 30)]

    statuses = [add_failure_and_send(db, automation, moment) for moment in day]
    next_day = add_failure_and_send(db, automation, START + timedelta(days=1))

    assert statuses.count(notify.SENT) == 50
    assert len(smtp_server.messages) == 51
    assert next_day == notify.SENT
    assert "and 670 more failures since" in smtp_server.messages[-1].text
    assert set(states(db)) == {"sent"}


def test_addresses_are_independent(db, automation, smtp_server):
    for i in range(5):
        add_failure_and_send(db, automation, START + timedelta(seconds=i))

    other = add_failure_and_send(db, automation, START + timedelta(seconds=6), "b@acme.test")
    same_address = add_failure_and_send(db, automation, START + timedelta(seconds=7))

    assert other == notify.SENT
    assert same_address == notify.HELD
    assert smtp_server.messages[-1].rcpt_tos == ["b@acme.test"]


def test_address_case_is_ignored(db, automation, smtp_server):
    for i in range(5):
        add_failure_and_send(db, automation, START + timedelta(seconds=i), "Ops@ACME.test")

    status = add_failure_and_send(db, automation, START + timedelta(seconds=6), ADDRESS)

    assert status == notify.HELD
    assert {message.rcpt_tos[0] for message in smtp_server.messages} == {ADDRESS}
    assert limiter_count(ADDRESS, START + timedelta(seconds=6)) == {300: 5, 86400: 5}


# Held-back summaries


def test_hold_schedules_send_when_window_reopens(db, automation, smtp_server):
    for i in range(6):
        add_failure_and_send(db, automation, START + timedelta(seconds=10 * i))

    assert scheduled_times(ADDRESS) == [aware(START + timedelta(seconds=300))]


def test_held_summary_goes_out_without_new_failure(db, automation, smtp_server):
    for i in range(8):
        add_failure_and_send(db, automation, START + timedelta(seconds=10 * i))

    status = notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=300))
    summary = smtp_server.messages[-1]

    assert status == notify.SENT
    assert len(smtp_server.messages) == 6
    assert "Time:        2026-01-05 08:01:10 UTC" in summary.text
    assert "and 2 more failures since 2026-01-05 08:00:50 UTC" in summary.text


def test_held_send_before_reopening_stays_held(db, automation, smtp_server):
    for i in range(6):
        add_failure_and_send(db, automation, START + timedelta(seconds=10 * i))

    status = notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=299))

    assert status == notify.HELD
    assert len(smtp_server.messages) == 5


def test_summary_lists_other_automations(db, account, automation, smtp_server):
    other = make_automation(db, account, name="Person added")
    for i in range(5):
        add_failure_and_send(db, automation, START + timedelta(seconds=i))
    add_failure(db, other, START + timedelta(seconds=10))
    add_failure(db, other, START + timedelta(seconds=11))
    add_failure(db, automation, START + timedelta(seconds=12))

    notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=300))
    text = smtp_server.messages[-1].text

    assert "Automation:  Deal won" in text
    assert "- Person added: 2 failures, the latest at 2026-01-05 08:00:11 UTC" in text
    assert f"http://pdauto.test/automations/{other.id}" in text


# Email content


def test_email_names_the_failure(db, automation, smtp_server):
    add_failure_and_send(db, automation, START)
    message = smtp_server.messages[0]

    assert message.subject == "Webhook failed: Deal won"
    assert message.rcpt_tos == [ADDRESS]
    assert message.message["Auto-Submitted"] == "auto-generated"
    assert f"URL:         {URL}" in message.text
    assert "Error:       HTTP 500 Internal Server Error" in message.text
    assert "Time:        2026-01-05 08:00:00 UTC" in message.text
    assert f"http://pdauto.test/automations/{automation.id}" in message.text
    assert "more failures" not in message.text


def test_email_message_id_is_stored(db, automation, smtp_server):
    add_failure_and_send(db, automation, START)
    notice = db.session.scalars(db.select(FailureNotice)).one()

    assert notice.email_message_id == smtp_server.messages[0].message["Message-ID"]
    assert notice.sent_at == START


def test_email_masks_url_password(db, automation, smtp_server):
    notify.record_failure(
        account_id=automation.account_id,
        automation_id=automation.id,
        address=ADDRESS,
        url_masked="https://hook:s3cret@hooks.acme.test/in",
        error="HTTP 500",
        occurred_at=START,
    )
    db.session.commit()

    notify.send_pending_notices(ADDRESS, now=START)
    text = smtp_server.messages[0].text

    assert "s3cret" not in text
    assert "https://hook:***@hooks.acme.test/in" in text


def test_automation_name_cannot_inject_headers(db, account, smtp_server):
    automation = make_automation(db, account, name="Won\r\nBcc: thief@evil.test\nX: y")

    add_failure_and_send(db, automation, START)
    message = smtp_server.messages[0]

    assert message.rcpt_tos == [ADDRESS]
    assert message.message["Bcc"] is None
    assert message.message["X"] is None
    assert message.subject == "Webhook failed: Won Bcc: thief@evil.test X: y"


def test_record_failure_rejects_address_with_newline(db, automation):
    with pytest.raises(ValueError, match="invalid failure email address"):
        add_failure(db, automation, START, address="ops@acme.test\r\nBcc: thief@evil.test")


def test_record_failure_normalizes_address(db, automation):
    notice = add_failure(db, automation, START, address="  Ops@Acme.TEST ")

    assert notice.address == ADDRESS


def test_nothing_pending(db, automation, smtp_server):
    status = notify.send_pending_notices(ADDRESS, now=START)

    assert status == notify.NOTHING
    assert smtp_server.messages == []


# SMTP trouble


def test_smtp_down_counts_nothing(db, automation, smtp_server):
    with smtp_server.down():
        status = add_failure_and_send(db, automation, START)

    assert status == notify.SMTP_DOWN
    assert states(db) == ["pending"]
    assert limiter_count(ADDRESS, START) == {300: 0, 86400: 0}


def test_smtp_down_schedules_retry(db, automation, smtp_server):
    with smtp_server.down():
        add_failure_and_send(db, automation, START)

    assert scheduled_times(ADDRESS) == [aware(START + timedelta(seconds=30))]


def test_smtp_down_retry_backs_off(db, automation, smtp_server):
    with smtp_server.down():
        add_failure_and_send(db, automation, START)
        notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=30))

    assert scheduled_times(ADDRESS) == [aware(START + timedelta(seconds=90))]


def test_smtp_up_again_sends(db, automation, smtp_server):
    with smtp_server.down():
        add_failure_and_send(db, automation, START)

    status = notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=30))

    assert status == notify.SENT
    assert len(smtp_server.messages) == 1
    assert states(db) == ["sent"]


def test_rejected_email_is_released(db, automation, smtp_server):
    smtp_server.set_mode("reject")

    status = add_failure_and_send(db, automation, START)

    assert status == notify.REJECTED
    assert states(db) == ["pending"]
    assert limiter_count(ADDRESS, START) == {300: 0, 86400: 0}
    assert scheduled_times(ADDRESS) == [aware(START + timedelta(seconds=30))]


def test_rejected_email_is_sent_on_retry(db, automation, smtp_server):
    smtp_server.set_mode("reject")
    add_failure_and_send(db, automation, START)
    smtp_server.set_mode("accept")

    status = notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=30))

    assert status == notify.SENT
    assert len(smtp_server.messages) == 1


def test_drop_after_data_is_not_repeated(db, automation, smtp_server):
    smtp_server.set_mode("drop_after_data")

    first = add_failure_and_send(db, automation, START)
    smtp_server.set_mode("accept")
    second = notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=60))

    assert first == notify.UNKNOWN
    assert second == notify.NOTHING
    assert len(smtp_server.messages) == 1
    assert states(db) == ["unknown"]


def test_drop_after_data_is_counted(db, automation, smtp_server):
    smtp_server.set_mode("drop_after_data")

    add_failure_and_send(db, automation, START)

    assert limiter_count(ADDRESS, START) == {300: 1, 86400: 1}


def test_timeout_after_data_is_unknown(app, db, automation, smtp_server):
    app.config["MAIL_TIMEOUT_SECONDS"] = 0.3
    smtp_server.set_mode("stall_after_data", stall_seconds=3)

    status = add_failure_and_send(db, automation, START)

    assert status == notify.UNKNOWN
    assert states(db) == ["unknown"]
    assert limiter_count(ADDRESS, START) == {300: 1, 86400: 1}


def test_stale_claim_becomes_unknown(db, automation, smtp_server):
    notice = add_failure(db, automation, START)
    notice.state = "sending"
    notice.sent_at = START
    db.session.commit()

    status = notify.send_pending_notices(ADDRESS, now=START + timedelta(hours=1))

    assert status == notify.NOTHING
    assert states(db) == ["unknown"]


def test_fresh_claim_is_left_alone(db, automation, smtp_server):
    notice = add_failure(db, automation, START)
    notice.state = "sending"
    notice.sent_at = START
    db.session.commit()

    notify.send_pending_notices(ADDRESS, now=START + timedelta(minutes=1))

    assert states(db) == ["sending"]


def test_render_error_leaves_notices_pending(db, automation, smtp_server, monkeypatch):
    def broken_template(*args, **kwargs):
        raise RuntimeError("template broke")

    add_failure(db, automation, START)
    monkeypatch.setattr(notify, "render_template", broken_template)

    with pytest.raises(RuntimeError, match="template broke"):
        notify.send_pending_notices(ADDRESS, now=START)

    assert states(db) == ["pending"]
    assert smtp_server.messages == []


# Two senders at once


def test_claim_takes_each_notice_once(db, automation):
    notice = add_failure(db, automation, START)

    first = notify._claim(ADDRESS, notice.id, "<one@test>", START)
    second = notify._claim(ADDRESS, notice.id, "<two@test>", START)

    assert first == 1
    assert second == 0


def test_concurrent_senders_send_once(app, db, automation, smtp_server):
    for i in range(3):
        add_failure(db, automation, START + timedelta(seconds=i))
    start_barrier = threading.Barrier(4)
    statuses = []

    def send():
        with app.app_context():
            start_barrier.wait(timeout=10)
            statuses.append(notify.send_pending_notices(ADDRESS, now=START + timedelta(seconds=5)))
            db.session.remove()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(statuses) == [notify.NOTHING] * 3 + [notify.SENT]
    assert len(smtp_server.messages) == 1
    assert "and 2 more failures" in smtp_server.messages[0].text
    assert limiter_count(ADDRESS, START + timedelta(seconds=5)) == {300: 1, 86400: 1}
