"""Serve the app the way production does (gunicorn, gthread) and check concurrency.

A Test Now against a URL that never completes the TCP handshake takes one
thread until the connect timeout, while other users' pages are still served.
"""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
CONNECT_TIMEOUT = 3.0


@pytest.fixture
def served(tmp_path, redis_server):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get(
            "PDAUTO_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'served.sqlite3'}"
        ),
        "REDIS_URL": redis_server.url,
        "PDAUTO_REDIS_PREFIX": f"served{port}",
        "SECRET_KEY": "served-test-secret",
        "PDAUTO_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DELIVERY_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
        "TEST_NOW_TIMEOUT_SECONDS": "10",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "PDAUTO_WEB_THREADS": "4",
    }
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run(
        [*flask, "create-user", "lead@example.com", "--password", PASSWORD]
        + ["--account", "Acme", "--role", "manager"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process, log_path)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        if "PDAUTO_TEST_DATABASE_URL" in os.environ:
            subprocess.run([*flask, "db", "downgrade", "base"], cwd=ROOT, env=env, check=True)


def _wait_until_up(base, process, log_path):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = log_path.read_text()
            raise AssertionError(f"gunicorn exited before it served /healthz:\n{log_text}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise AssertionError(f"gunicorn: /healthz timed out after 30 s:\n{log_path.read_text()}")


def _logged_in_session(base):
    session = requests.Session()
    page = session.get(f"{base}/login", timeout=5).text
    session.post(
        f"{base}/login",
        data={"email": "lead@example.com", "password": PASSWORD, "csrf_token": _csrf(page)},
        timeout=5,
    )
    builder = session.get(f"{base}/automations/new", timeout=5)
    assert builder.status_code == 200
    session.headers["X-CSRFToken"] = _csrf(builder.text)
    return session


def _csrf(html):
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_slow_test_now_blocks_nobody(served, full_backlog_address):
    host, port = full_backlog_address
    session = _logged_in_session(served)
    result = {}

    def press_test_now():
        started = time.monotonic()
        response = session.post(
            f"{served}/automations/test",
            data={
                "name": "Deal won",
                "event_model": "deal",
                "event_action": "updated",
                "url": f"http://{host}:{port}/hook",
                "failure_email": "ops@example.com",
            },
            headers={"HX-Request": "true"},
            timeout=30,
        )
        result["seconds"] = time.monotonic() - started
        result["response"] = response

    test_now = threading.Thread(target=press_test_now)
    test_now.start()
    time.sleep(0.5)

    other_user = requests.Session()
    page_times = []
    for _ in range(5):
        started = time.monotonic()
        assert other_user.get(f"{served}/login", timeout=10).status_code == 200
        page_times.append(time.monotonic() - started)
    still_waiting = test_now.is_alive()
    test_now.join(timeout=30)

    assert still_waiting
    assert max(page_times) < 1.0
    assert result["response"].status_code == 200
    assert "timed out connecting" in result["response"].text
    assert CONNECT_TIMEOUT - 0.5 < result["seconds"] < CONNECT_TIMEOUT + 3
