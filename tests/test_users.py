"""Check user management by admins and password changes by everyone."""

import pytest

from pdauto.extensions import db
from pdauto.models import User
from tests.conftest import PASSWORD, login

NEW_PASSWORD = "a new long password"


@pytest.fixture
def admin_client(app, users):
    client = app.test_client()
    login(client, users["admin"][1])
    return client


def get_user(app, user_id):
    with app.app_context():
        return db.session.get(User, user_id)


def test_admin_creates_user_who_logs_in(app, admin_client, users):
    response = admin_client.post(
        "/users/new",
        data={"email": "Nina@Example.com", "role": "manager", "password": "long enough 123"},
    )

    assert response.status_code == 302
    with app.app_context():
        user = db.session.scalar(db.select(User).where(User.email == "nina@example.com"))
        assert user.role == "manager"
        assert user.account_id == users["admin"][2]
        assert user.password_hash.startswith("scrypt:")
    assert login(app.test_client(), "nina@example.com", "long enough 123").status_code == 302


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "not an email", "role": "rep", "password": "long enough 123"}, "Invalid email"),
        ({"email": "x@example.com", "role": "rep", "password": "short"}, "10 to 200 characters"),
        ({"email": "x@example.com", "role": "owner", "password": "long enough 123"}, "Not a valid"),
    ],
)
def test_invalid_new_user_shows_message(app, admin_client, data, message):
    response = admin_client.post("/users/new", data=data)

    assert response.status_code == 422
    assert message in response.text
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 4


def test_duplicate_email_shows_message(admin_client, users):
    response = admin_client.post(
        "/users/new",
        data={"email": users["other"][1], "role": "rep", "password": "long enough 123"},
    )

    assert response.status_code == 422
    assert "exists already" in response.text


def test_admin_sets_role(app, admin_client, users):
    response = admin_client.post(f"/users/{users['rep'][0]}/role", data={"role": "manager"})

    assert response.status_code == 302
    assert get_user(app, users["rep"][0]).role == "manager"


def test_last_admin_keeps_role(app, admin_client, users):
    admin_client.post(f"/users/{users['admin'][0]}/role", data={"role": "rep"})

    assert get_user(app, users["admin"][0]).role == "admin"


def test_deactivated_user_cannot_log_in(app, admin_client, users):
    rep_client = app.test_client()
    login(rep_client, users["rep"][1])

    admin_client.post(f"/users/{users['rep'][0]}/deactivate")

    assert get_user(app, users["rep"][0]).active is False
    assert rep_client.get("/").status_code == 302
    response = app.test_client().post(
        "/login", data={"email": users["rep"][1], "password": PASSWORD}
    )
    assert response.status_code == 401


def test_admin_cannot_deactivate_self(app, admin_client, users):
    admin_client.post(f"/users/{users['admin'][0]}/deactivate")

    assert get_user(app, users["admin"][0]).active is True


def test_other_account_user_is_404(admin_client, users):
    other_id = users["other"][0]

    assert admin_client.post(f"/users/{other_id}/role", data={"role": "rep"}).status_code == 404
    assert admin_client.post(f"/users/{other_id}/deactivate").status_code == 404
    assert admin_client.post(f"/users/{other_id}/activate").status_code == 404
    assert users["other"][1] not in admin_client.get("/users").text


@pytest.mark.parametrize("role", ["manager", "rep"])
def test_non_admin_gets_403(app, users, role):
    client = app.test_client()
    login(client, users[role][1])

    assert client.get("/users").status_code == 403
    assert client.post("/users/new", data={}).status_code == 403
    assert client.post(f"/users/{users['rep'][0]}/role", data={"role": "admin"}).status_code == 403


def test_change_password(app, manager_client, users):
    response = manager_client.post(
        "/password", data={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 302
    assert manager_client.get("/").status_code == 302
    assert login(app.test_client(), users["manager"][1], NEW_PASSWORD).status_code == 302


def test_change_password_needs_current(app, manager_client, users):
    response = manager_client.post(
        "/password", data={"current_password": "wrong password", "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 422
    assert "not your current password" in response.text
    with app.app_context():
        assert db.session.get(User, users["manager"][0]).check_password(PASSWORD)
