"""Check /metrics: who may read it, and the counts it exports from Redis and the database."""

from datetime import datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdauto import crm, metrics, notify, queue
from pdauto.extensions import db
from pdauto.models import Account, Automation
from tests.conftest import run_jobs
from tests.factories import make_automation


def samples(text):
    """Return {(sample name, sorted labels): value} for a Prometheus text page."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_loopback_client_reads_metrics(client):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert "pdauto_delivery_attempts" in response.text


@pytest.mark.parametrize("app_overrides", [{"PDAUTO_METRICS_NETWORKS": ["10.0.0.0/8"]}])
def test_other_client_gets_403(client):
    assert client.get("/metrics").status_code == 403


@pytest.mark.parametrize(
    "app_overrides",
    [{"PDAUTO_METRICS_NETWORKS": [], "PDAUTO_METRICS_TOKEN": "metrics-token-1"}],
)
def test_token_opens_metrics(client):
    assert client.get("/metrics").status_code == 403
    wrong = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-2"})
    assert wrong.status_code == 403
    right = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-1"})
    assert right.status_code == 200


def test_attempts_and_latency_exported(app, client):
    with app.app_context():
        metrics.record_attempt("success", 0.003)
        metrics.record_attempt("success", 0.2)
        metrics.record_attempt("http_error", 40.0)
        metrics.record_emails("sent", 2)
        metrics.record_emails("held")

    values = samples(client.get("/metrics").text)

    assert values[("pdauto_delivery_attempts_total", (("outcome", "success"),))] == 2
    assert values[("pdauto_delivery_attempts_total", (("outcome", "http_error"),))] == 1
    assert values[("pdauto_delivery_attempt_seconds_bucket", (("le", "0.005"),))] == 1
    assert values[("pdauto_delivery_attempt_seconds_bucket", (("le", "0.25"),))] == 2
    assert values[("pdauto_delivery_attempt_seconds_bucket", (("le", "+Inf"),))] == 3
    assert values[("pdauto_delivery_attempt_seconds_count", ())] == 3
    assert values[("pdauto_delivery_attempt_seconds_sum", ())] == pytest.approx(40.203)
    assert values[("pdauto_failure_emails_total", (("outcome", "sent"),))] == 2
    assert values[("pdauto_failure_emails_total", (("outcome", "held"),))] == 1


def test_queue_depth_exported(app, client):
    with app.app_context():
        queue.enqueue_dispatch(12345)
        deliveries_queue = queue.get_queue("deliveries").name

    values = samples(client.get("/metrics").text)

    dispatch_queue = [
        value
        for (name, labels), value in values.items()
        if name == "pdauto_queue_jobs" and ("state", "queued") in labels and value == 1
    ]
    assert dispatch_queue == [1]
    assert values[("pdauto_queue_jobs", (("queue", deliveries_queue), ("state", "failed")))] == 0


def test_email_outcomes_counted(app, client, smtp_server):
    start = datetime(2026, 1, 5, 8, 0, 0)
    with app.app_context():
        account = Account(name="Acme")
        db.session.add(account)
        db.session.flush()
        automation = Automation(
            account_id=account.id, name="Deal won", event_model="deal", event_action="updated"
        )
        db.session.add(automation)
        db.session.commit()
        for second in range(7):
            at = start + timedelta(seconds=second)
            notify.record_failure(
                account_id=account.id,
                automation_id=automation.id,
                address="ops@example.com",
                url_masked="http://127.0.0.1:9/hook",
                error="HTTP 500",
                occurred_at=at,
            )
            db.session.commit()
            notify.send_pending_notices("ops@example.com", now=at)

    values = samples(client.get("/metrics").text)

    assert values[("pdauto_failure_emails_total", (("outcome", "sent"),))] == 5
    assert values[("pdauto_failure_emails_total", (("outcome", "held"),))] == 2


def test_delivery_attempts_counted(app, users, client, receiver):
    receiver.respond("/hook", status=204)
    with app.app_context():
        make_automation(users["manager"][2], receiver.url("/hook"))
        crm.create_record("deal", users["manager"][2], {"name": "Big deal", "value": 1})
    run_jobs(app)

    values = samples(client.get("/metrics").text)

    assert values[("pdauto_delivery_attempts_total", (("outcome", "success"),))] == 1
    assert values[("pdauto_delivery_attempt_seconds_count", ())] == 1
    assert values[("pdauto_deliveries", (("state", "succeeded"),))] == 1
