"""Check CSRF protection on every POST route, and the message for a stale form."""

import pytest

from tests.conftest import PASSWORD, csrf_token_from
from tests.test_isolation import FIXED_VALUES

ROW_VALUES = {
    "record_id": 1,
    "automation_id": 1,
    "delivery_id": "msg_1",
    "user_id": 1,
    "token_id": 1,
    "task_id": 1,
}


@pytest.fixture
def app_overrides():
    return {"WTF_CSRF_ENABLED": True}


def post_routes(app):
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        # The RQ dashboard checks the Origin header instead (see test_rq_dashboard.py),
        # and the API takes bearer tokens, never the session cookie (see test_api.py).
        if "POST" not in rule.methods or rule.rule.startswith(("/rq/", "/api/")):
            continue
        values = {"collection": "deals", **ROW_VALUES, **FIXED_VALUES}
        arguments = {name: values[name] for name in rule.arguments}
        yield app.url_map.bind("localhost").build(rule.endpoint, arguments, method="POST")


def logged_in(app, email):
    client = app.test_client()
    token = csrf_token_from(client.get("/login").text)
    response = client.post(
        "/login", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302
    return client


def test_login_without_token_rejected(client, users):
    response = client.post("/login", data={"email": users["admin"][1], "password": PASSWORD})

    assert response.status_code == 400
    assert "Reload the page" in response.text


def test_every_post_needs_token(app, users):
    client = logged_in(app, users["admin"][1])
    urls = list(post_routes(app))
    assert "/automations/test" in urls

    for url in urls:
        response = client.post(url, data={"name": "x"})

        assert response.status_code == 400, url
        assert "Form expired" in response.text, url


def test_htmx_request_gets_fragment(app, users):
    client = logged_in(app, users["manager"][1])

    response = client.post(
        "/automations/test", data={"url": "http://127.0.0.1:9/"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 400
    assert "<html" not in response.text
    assert "Reload the page" in response.text


def test_header_token_accepted(app, users, receiver):
    client = logged_in(app, users["manager"][1])
    token = csrf_token_from(client.get("/automations/new").text)

    response = client.post(
        "/automations/test",
        data={
            "name": "Deal won",
            "event_model": "deal",
            "event_action": "created",
            "url": receiver.url("/hook"),
            "failure_email": "ops@example.com",
        },
        headers={"HX-Request": "true", "X-CSRFToken": token},
    )

    assert response.status_code == 200
    assert len(receiver.requests) == 1


def test_token_from_other_session_rejected(app, users):
    first = logged_in(app, users["manager"][1])
    second = logged_in(app, users["admin"][1])
    foreign_token = csrf_token_from(first.get("/people/new").text)

    response = second.post("/people/new", data={"first_name": "Eve", "csrf_token": foreign_token})

    assert response.status_code == 400
    assert "Form expired" in response.text
