"""Check login: failed attempts limited per email and per client address, sessions renewed."""

import pytest

from pdauto.extensions import db
from pdauto.models import User
from tests.conftest import PASSWORD, login


def attempt(client, email, password="wrong password", address="198.51.100.7"):
    return client.post(
        "/login",
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def test_wrong_password_is_401(client, users):
    response = attempt(client, users["manager"][1])

    assert response.status_code == 401
    assert "Invalid email or password." in response.text


def test_sixth_attempt_rejected(client, users):
    email = users["manager"][1]
    for _ in range(5):
        assert attempt(client, email).status_code == 401

    response = attempt(client, email, PASSWORD)

    assert response.status_code == 429
    assert "Too many failed logins. Wait 5 minutes" in response.text
    assert client.get("/").status_code == 302


def test_other_email_not_limited(client, users):
    for _ in range(6):
        attempt(client, users["manager"][1])

    response = attempt(client, users["admin"][1], PASSWORD)

    assert response.status_code == 302


def test_success_does_not_count(client, users):
    email = users["manager"][1]
    for _ in range(4):
        attempt(client, email)
    assert attempt(client, email, PASSWORD).status_code == 302
    client.post("/logout")

    response = attempt(client, email)

    assert response.status_code == 401


def test_address_limit_across_emails(client, users):
    for number in range(20):
        assert attempt(client, f"nobody{number}@example.com").status_code == 401

    blocked = attempt(client, users["manager"][1], PASSWORD)
    other_address = attempt(client, users["manager"][1], PASSWORD, address="198.51.100.8")

    assert blocked.status_code == 429
    assert other_address.status_code == 302


def test_redis_down_still_logs_in(client, users, redis_server):
    redis_server.stop()
    try:
        response = attempt(client, users["manager"][1], PASSWORD)
    finally:
        redis_server.start()

    assert response.status_code == 302


def test_login_renews_session(client, users):
    with client.session_transaction() as session:
        session["planted"] = "value from before the login"

    login(client, users["manager"][1])

    with client.session_transaction() as session:
        assert "planted" not in session
        assert session["_user_id"] == str(users["manager"][0])


def test_logout_ends_session(client, users):
    login(client, users["manager"][1])

    client.post("/logout")

    assert client.get("/").status_code == 302


def test_deactivated_user_logged_out(app, client, users):
    login(client, users["manager"][1])
    with app.app_context():
        db.session.get(User, users["manager"][0]).active = False
        db.session.commit()

    response = client.get("/")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


@pytest.mark.parametrize("spelling", [str.upper, lambda email: f" {email} "])
def test_email_case_and_spaces_ignored(client, users, spelling):
    email = spelling(users["manager"][1])

    assert attempt(client, email, PASSWORD).status_code == 302
