"""Run a full flow and search every place a secret could leak to.

The flow: Test Now and Save an automation whose URL has credentials and which
sends an API key header, a change delivered to a failing receiver, the
failure email, and an admin browsing the RQ dashboard. Then the log records,
every Redis value (job payloads decompressed), the emails and the pages are
searched for each secret.
"""

import logging
import re
import zlib

import pytest

from pdauto import crm, queue
from pdauto.extensions import db
from pdauto.models import Action
from tests.conftest import login, run_jobs

URL_PASSWORD = "pa55-in-url-7f3e"
HEADER_TOKEN = "tok-in-header-91ab"
SMTP_PASSWORD = "smtp-pass-c0ffee"


@pytest.fixture
def app_overrides():
    return {"MAIL_PASSWORD": SMTP_PASSWORD}


def redis_values(connection, pattern):
    """Return every value stored under keys matching `pattern`, as text."""
    texts = []
    for key in connection.scan_iter(match=pattern, count=1000):
        kind = connection.type(key).decode()
        if kind == "string":
            values = [connection.get(key)]
        elif kind == "hash":
            values = list(connection.hgetall(key).values())
        elif kind == "list":
            values = connection.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            values = list(
                connection.zrange(key, 0, -1) if kind == "zset" else connection.smembers(key)
            )
        else:
            values = []
        for value in values:
            texts.append(key.decode() + " " + _decoded(value))
    return texts


def _decoded(value):
    """Return job payloads decompressed, so pickled arguments are searched too."""
    try:
        value = zlib.decompress(value)
    except zlib.error:
        pass
    return value.decode("utf-8", "replace")


def test_no_secret_leaks(app, users, manager_client, receiver, smtp_server, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.respond("/hook", status=200, body="ok")
    host_and_path = receiver.url("/hook").removeprefix("http://")
    url = f"http://hook-user:{URL_PASSWORD}@{host_and_path}"
    fields = {
        "name": "Deal created",
        "event_model": "deal",
        "event_action": "created",
        "url": url,
        "failure_email": "ops@example.com",
        "content_type": "application/json",
        "custom_headers": f"X-Team: sales\nX-Api-Key: {HEADER_TOKEN}",
    }

    tested = manager_client.post("/automations/test", data=fields, headers={"HX-Request": "true"})
    proof = re.search(r'data-proof="([^"]+)"', tested.text)
    assert tested.status_code == 200
    assert proof, tested.text
    saved = manager_client.post("/automations/new", data={**fields, "test_proof": proof.group(1)})
    assert saved.status_code == 302, saved.text
    automation_path = saved.headers["Location"]
    with app.app_context():
        signing_secret = db.session.scalar(db.select(Action.signing_secret))

    receiver.respond("/hook", status=500, body="down")
    with app.app_context():
        crm.create_record("deal", users["manager"][2], {"name": "Big deal", "value": 10})
    run_jobs(app)
    receiver.wait_for_requests(2)
    # A second change stays queued, so the dashboard has a job to show.
    with app.app_context():
        crm.create_record("deal", users["manager"][2], {"name": "Queued deal", "value": 20})

    admin = app.test_client()
    login(admin, users["admin"][1])
    dashboard = [admin.get("/rq/").text, admin.get("/rq/0/data/queues.json").text]
    with app.app_context():
        queue_names = [rq_queue.name for rq_queue in queue.all_queues()]
        stored = redis_values(queue.get_redis(), "*")
    for name in queue_names:
        for registry in ("queued", "failed", "finished", "scheduled", "started", "deferred"):
            dashboard.append(admin.get(f"/rq/0/data/jobs/{name}/{registry}/100/asc/1.json").text)
    job_ids = set(re.findall(r'"id": ?"([^"]+)"', "".join(dashboard)))
    assert job_ids, "the dashboard listed no jobs, so the search would prove nothing"
    for job_id in job_ids:
        dashboard.append(admin.get(f"/rq/0/data/job/{job_id}.json").text)
        dashboard.append(admin.get(f"/rq/0/view/job/{job_id}").text)

    places = {
        "logs": caplog.text,
        "redis": "\n".join(stored),
        "emails": "\n".join(message.text for message in smtp_server.messages),
        "dashboard": "\n".join(dashboard),
        "automation page": manager_client.get(automation_path).text,
        "delivery log": manager_client.get(automation_path, headers={"HX-Request": "true"}).text,
        # The fragment echoes the URL the user typed, for the page to compare with the field.
        "test result": re.sub(r'data-tested-url="[^"]*"', "", tested.text),
    }
    assert smtp_server.messages, "no failure email was sent"
    for secret in (URL_PASSWORD, HEADER_TOKEN, SMTP_PASSWORD, signing_secret):
        for where, text in places.items():
            assert secret not in text, f"{secret} found in {where}"
    assert "hook-user:***@" in places["automation page"]
    assert "X-Api-Key: ***" in places["delivery log"]
    assert "X-Team: sales" in places["delivery log"]
