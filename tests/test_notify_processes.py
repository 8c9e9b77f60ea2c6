"""Check the failure-email limit when four processes record failures at once.

Each process is a separate interpreter with its own app, like a web or worker
process. All of them share the database file, Redis and the SMTP server.
"""

import multiprocessing
import pickle
from datetime import datetime, timedelta

from pdauto import create_app, notify
from pdauto.extensions import db
from pdauto.models import Account, Automation, FailureNotice

START = datetime(2026, 1, 5, 8, 0, 0)
ADDRESS = "ops@example.com"
PROCESSES = 4
FAILURES_PER_PROCESS = 5


def raise_failures(config, automation_id, account_id, offset, barrier, results):
    app = create_app(config)
    statuses = []
    with app.app_context():
        barrier.wait(timeout=30)
        for i in range(FAILURES_PER_PROCESS):
            at = START + timedelta(seconds=offset + i * PROCESSES)
            notify.record_failure(
                account_id=account_id,
                automation_id=automation_id,
                address=ADDRESS,
                url_masked="http://127.0.0.1:9/hook",
                error="HTTP 500 Internal Server Error",
                occurred_at=at,
            )
            db.session.commit()
            statuses.append(notify.send_pending_notices(ADDRESS, now=at))
        db.session.remove()
    results.put(statuses)


def test_limit_across_four_processes(app, smtp_server):
    with app.app_context():
        account = Account(name="Acme")
        db.session.add(account)
        db.session.flush()
        automation = Automation(
            account_id=account.id, name="Deal won", event_model="deal", event_action="updated"
        )
        db.session.add(automation)
        db.session.commit()
        ids = (automation.id, account.id)

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    config = {key: value for key, value in app.config.items() if _picklable(value)}
    processes = [
        context.Process(target=raise_failures, args=(config, *ids, offset, barrier, results))
        for offset in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    statuses = [status for _ in processes for status in results.get(timeout=90)]
    for process in processes:
        process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0] * PROCESSES
    assert len(statuses) == PROCESSES * FAILURES_PER_PROCESS
    assert len(smtp_server.messages) == 5
    assert statuses.count(notify.SENT) == 5
    with app.app_context():
        notices = db.session.scalars(db.select(FailureNotice)).all()
        states = sorted(notice.state for notice in notices)
    # Each failure is either in one of the five emails or still pending.
    assert len(notices) == PROCESSES * FAILURES_PER_PROCESS
    assert set(states) <= {"sent", "pending"}
    assert states.count("pending") >= 1


def _picklable(value):
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True
