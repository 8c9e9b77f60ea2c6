"""Check the log format: plain or JSON lines, each with the id of the RQ job that wrote it."""

import io
import json
import logging

import pytest

from pdauto import crm
from pdauto.logs import configure_logging
from tests.conftest import run_jobs
from tests.factories import make_automation


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream=stream)
    yield stream
    logger = logging.getLogger("pdauto")
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def json_lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_name_job_and_delivery(app, users, receiver, log_stream):
    account_id = users["manager"][2]
    with app.app_context():
        make_automation(account_id, receiver.url("/hook"))
        crm.create_record("deal", account_id, {"name": "Big deal", "value": 100})

    run_jobs(app)

    receiver.wait_for_requests(1)
    records = json_lines(log_stream)
    succeeded = [record for record in records if "succeeded" in record["message"]]
    assert len(succeeded) == 1
    assert succeeded[0]["job_id"] != "-"
    assert "msg_" in succeeded[0]["message"]
    assert f"(account {account_id})" in succeeded[0]["message"]
    assert "of automation " in succeeded[0]["message"]
    assert succeeded[0]["levelname"] == "INFO"
    assert succeeded[0]["name"].startswith("pdauto.")
    assert "time" in succeeded[0]


def test_outside_job_has_dash(log_stream):
    logging.getLogger("pdauto.test").warning("sweep failed: %s", "database is locked")

    [record] = json_lines(log_stream)
    assert record["job_id"] == "-"
    assert record["message"] == "sweep failed: database is locked"


def test_text_format_names_job():
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream=stream)
    try:
        logging.getLogger("pdauto.test").info("delivery %s queued", "msg_1")
    finally:
        logging.getLogger("pdauto").removeHandler(handler)
        logging.getLogger("pdauto").setLevel(logging.NOTSET)

    assert stream.getvalue().rstrip().endswith("INFO pdauto.test [job -] delivery msg_1 queued")


def test_unknown_format_rejected():
    with pytest.raises(RuntimeError, match="text or json"):
        configure_logging("INFO", "xml")
