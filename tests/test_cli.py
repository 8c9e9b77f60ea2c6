"""Check the flask commands that manage accounts, users and passwords."""

from pdauto.extensions import db
from pdauto.models import Account, User
from tests.conftest import login


def test_create_account(app):
    result = app.test_cli_runner().invoke(args=["create-account", "Initech"])

    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.scalar(db.select(Account).where(Account.name == "Initech"))


def test_create_account_twice_fails(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["create-account", "Initech"])

    result = runner.invoke(args=["create-account", "Initech"])

    assert result.exit_code == 1
    assert "exists already" in result.output


def test_create_user_then_log_in(app):
    result = app.test_cli_runner().invoke(
        args=["create-user", "Boss@Example.com", "--password", "long password 1"]
        + ["--account", "Initech", "--role", "admin"]
    )

    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalar(db.select(User).where(User.email == "boss@example.com"))
        assert user.role == "admin"
    assert login(app.test_client(), "boss@example.com", "long password 1").status_code == 302


def test_reset_password(app, users):
    email = users["rep"][1]

    result = app.test_cli_runner().invoke(
        args=["reset-password", email, "--password", "brand new password"]
    )

    assert result.exit_code == 0, result.output
    assert login(app.test_client(), email, "brand new password").status_code == 302


def test_reset_password_unknown_user(app):
    result = app.test_cli_runner().invoke(
        args=["reset-password", "nobody@example.com", "--password", "brand new password"]
    )

    assert result.exit_code == 1
    assert "no user with the email nobody@example.com" in result.output


def test_reset_password_too_short(app, users):
    result = app.test_cli_runner().invoke(
        args=["reset-password", users["rep"][1], "--password", "short"]
    )

    assert result.exit_code == 1
    assert "at least 8 characters" in result.output
