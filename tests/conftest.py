"""Fixtures shared by the tests: the app on a private Redis, users, and a worker."""

import itertools
import os
import re

import pytest

from pdauto import create_app
from pdauto.extensions import db as _db
from pdauto.models import Account, User

pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.receivers",
    "tests.support.mailserver",
]

PASSWORD = "correct horse battery"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
_counter = itertools.count()


def app_config(tmp_path, redis_server, **overrides):
    config = {
        "TESTING": True,
        "MAIL_SUPPRESS_SEND": False,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": os.environ.get(
            "PDAUTO_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'test.sqlite3'}"
        ),
        "REDIS_URL": redis_server.url,
        "PDAUTO_REDIS_PREFIX": f"t{next(_counter)}",
        "PDAUTO_ALLOWED_NETWORKS": LOOPBACK,
        "PDAUTO_BASE_URL": "http://pdauto.test",
        "WTF_CSRF_ENABLED": False,
        "DELIVERY_CONNECT_TIMEOUT_SECONDS": 1.0,
        "DELIVERY_TIMEOUT_SECONDS": 3.0,
        "TEST_NOW_TIMEOUT_SECONDS": 2.0,
        "MAIL_PORT": 1,
    }
    config.update(overrides)
    return config


@pytest.fixture
def app_overrides():
    """Settings a test module overrides by redefining this fixture."""
    return {}


@pytest.fixture
def app(tmp_path, redis_client, redis_server, smtp_server, app_overrides):
    config = app_config(
        tmp_path,
        redis_server,
        MAIL_SERVER="127.0.0.1",
        MAIL_PORT=smtp_server.port,
        **app_overrides,
    )
    app = create_app(config)
    with app.app_context():
        _db.create_all()
    yield app
    with app.app_context():
        _db.session.remove()
        _db.drop_all()
        _db.engine.dispose()
    redis_client = app.extensions.get("pdauto_redis")
    if redis_client is not None:
        redis_client.close()


@pytest.fixture
def db(app):
    with app.app_context():
        yield _db


@pytest.fixture
def client(app):
    return app.test_client()


def make_user(role="manager", account_name="Acme", email=None):
    """Create a user (and its account if new) and return it; call in an app context."""
    account = _db.session.scalar(_db.select(Account).where(Account.name == account_name))
    if account is None:
        account = Account(name=account_name)
        _db.session.add(account)
    email = email or f"{role}{next(_counter)}@{account_name.lower()}.example.com"
    user = User(account=account, email=email, role=role)
    user.set_password(PASSWORD)
    _db.session.add(user)
    _db.session.commit()
    return user


@pytest.fixture
def users(app):
    """A manager, an admin and a rep of Acme, and a manager of another account."""
    with app.app_context():
        created = {
            "manager": make_user("manager"),
            "admin": make_user("admin"),
            "rep": make_user("rep"),
            "other": make_user("manager", account_name="Globex"),
        }
        return {key: (user.id, user.email, user.account_id) for key, user in created.items()}


def login(client, email, password=PASSWORD):
    response = client.post("/login", data={"email": email, "password": password})
    assert response.status_code == 302, response.text
    return response


@pytest.fixture
def manager_client(app, users):
    client = app.test_client()
    login(client, users["manager"][1])
    return client


def run_jobs(app, rounds=5):
    """Run queued jobs in this process until the queues are empty."""
    from pdauto.worker import make_worker

    worker = make_worker(app)
    for _ in range(rounds):
        if not worker.work(burst=True, with_scheduler=False):
            break


def enqueue_scheduled_now(app):
    """Move every scheduled job to its queue, as the RQ scheduler does when due."""
    from rq.registry import ScheduledJobRegistry

    from pdauto import queue

    with app.app_context():
        for rq_queue in queue.all_queues():
            registry = ScheduledJobRegistry(queue=rq_queue)
            for job_id in registry.get_job_ids():
                rq_queue.enqueue_job(rq_queue.fetch_job(job_id))
                registry.remove(job_id)


def csrf_token_from(html):
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf-token" content="([^"]+)"', html
    )
    assert match, "no CSRF token in the page"
    return match.group(1)
