"""Check every route of the app against every kind of visitor.

The routes come from the app's URL map, so a new route without an entry in
ACCESS fails this test until someone decides who may use it. For each route
and method: anonymous visitors go to the login page, roles outside the
route's list get 403, and a user of another account who names this account's
ids gets 404, reads none of its data and changes nothing.

The JSON API under /api/ takes API tokens only: there each visitor sends its
own token, and a request without one gets a 401 JSON error, even with the
session cookie of a logged-in user.
"""

import functools
import hashlib
import json
from datetime import date

import pytest
from rq.job import Job
from werkzeug.security import generate_password_hash

from pdauto import create_app, queue
from pdauto.extensions import db
from pdauto.models import (
    Account,
    Action,
    ApiToken,
    Attempt,
    Automation,
    Company,
    Deal,
    Delivery,
    Event,
    Person,
    Task,
    User,
)
from tests.conftest import PASSWORD, login

PUBLIC = "public"
ANY_USER = ("admin", "manager", "rep")
MANAGERS = ("admin", "manager")
ADMINS = ("admin",)

# Who may use each endpoint. Every endpoint in the URL map needs an entry.
ACCESS = {
    "static": PUBLIC,
    "auth.login": PUBLIC,
    "main.healthz": PUBLIC,
    # Limited by network or token instead of login: see test_metrics.py.
    "main.metrics": PUBLIC,
    "auth.logout": ANY_USER,
    "main.home": ANY_USER,
    "records.list_records": ANY_USER,
    "records.new_record": ANY_USER,
    "records.edit_record": ANY_USER,
    "records.delete_record": ANY_USER,
    "automations.list_automations": ANY_USER,
    "automations.show_automation": ANY_USER,
    "automations.new_automation": MANAGERS,
    "automations.edit_automation": MANAGERS,
    "automations.test_now": MANAGERS,
    "automations.rotate_secret": MANAGERS,
    "automations.duplicate_automation": MANAGERS,
    "automations.pause_automation": MANAGERS,
    "automations.resume_automation": MANAGERS,
    "automations.delete_automation": MANAGERS,
    "automations.redeliver_failed": MANAGERS,
    "automations.redeliver": MANAGERS,
    "users.change_password": ANY_USER,
    "users.list_users": ADMINS,
    "users.new_user": ADMINS,
    "users.set_role": ADMINS,
    "users.deactivate_user": ADMINS,
    "users.activate_user": ADMINS,
    "tasks.list_tasks": ANY_USER,
    "tasks.complete_task": ANY_USER,
    # Each user manages their own tokens; another user's token id gives 404.
    "tokens.list_tokens": ANY_USER,
    "tokens.new_token": ANY_USER,
    "tokens.revoke_token": ANY_USER,
    "api.openapi": PUBLIC,
    "api.list_records": ANY_USER,
    "api.create_record": ANY_USER,
    "api.get_record": ANY_USER,
    "api.update_record": ANY_USER,
    "api.delete_record": ANY_USER,
    "api.list_automations": ANY_USER,
    "api.get_automation": ANY_USER,
    "api.list_deliveries": ANY_USER,
    "api.get_delivery": ANY_USER,
    "api.redeliver": MANAGERS,
}
# Every route of the mounted RQ dashboard is for admins only.
ACCESS_BY_BLUEPRINT = {"rq_dashboard": ADMINS}

# Values for URL parts that name no row of an account.
FIXED_VALUES = {
    "filename": "app.css",
    "instance_number": 0,
    "queue_name": "default",
    "registry_name": "failed",
    "per_page": 10,
    "order": "asc",
    "page": 1,
    "job_id": "no-such-job",
}
COLLECTIONS = ("people", "companies", "deals")
ROW_ARGUMENTS = {"record_id", "automation_id", "delivery_id", "user_id", "token_id", "task_id"}
API_PREFIX = "/api/"
MARKER = "Zanzibar"  # in every name of the first account's rows
FORM_DATA = {
    "name": "Changed name",
    "first_name": "Changed",
    "last_name": "Name",
    "email": "changed@example.com",
    "website": "https://changed.example.com",
    "value": "5",
    "status": "won",
    "stage": "won",
    "role": "admin",
    "event_model": "deal",
    "event_action": "created",
    "url": "http://127.0.0.1:9/hook",
    "failure_email": "changed@example.com",
    "since": "2026-01-01T00:00",
    "current_password": PASSWORD,
    "new_password": "a changed long password",
}
# JSON bodies of the API's POST and PATCH requests, by collection.
API_BODIES = {
    "people": {"first_name": "Changed"},
    "companies": {"name": "Changed name"},
    "deals": {"name": "Changed name", "status": "won"},
}


def access_for(rule):
    blueprint = rule.endpoint.rpartition(".")[0]
    return ACCESS.get(rule.endpoint) or ACCESS_BY_BLUEPRINT.get(blueprint)


def rule_for(app, path, endpoint):
    return next(r for r in app.url_map.iter_rules() if r.rule == path and r.endpoint == endpoint)


def route_cases():
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    cases = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            collections = COLLECTIONS if "collection" in rule.arguments else (None,)
            for collection in collections:
                label = f"{method} {rule.rule}" + (f" [{collection}]" if collection else "")
                cases.append(pytest.param(rule.rule, rule.endpoint, method, collection, id=label))
    return cases


def make_rows(account_id, token_user_id=None):
    """Create one row of each kind in the account; return the ids to put in URLs.

    The API token belongs to `token_user_id`, by default to the new user.
    """
    user = User(
        account_id=account_id,
        email=f"{MARKER.lower()}-{_next()}@example.com",
        role="rep",
        password_hash=password_hash(),
    )
    person = Person(account_id=account_id, first_name=MARKER, last_name="Person")
    company = Company(account_id=account_id, name=f"{MARKER} Company")
    deal = Deal(account_id=account_id, name=f"{MARKER} Deal", value=10, status="open")
    automation = Automation(
        account_id=account_id,
        name=f"{MARKER} Automation",
        event_model="deal",
        event_action="created",
    )
    automation.actions.append(
        Action(kind="call_api", url="http://127.0.0.1:9/hook", failure_email="ops@example.com")
    )
    db.session.add_all([user, person, company, deal, automation])
    db.session.flush()
    event = Event(account_id=account_id, model="deal", action="created", record_id=deal.id)
    db.session.add(event)
    db.session.flush()
    delivery = Delivery(
        account_id=account_id,
        event_id=event.id,
        action_id=automation.actions[0].id,
        automation_id=automation.id,
        state="failed",
        attempt_count=1,
    )
    db.session.add(delivery)
    db.session.flush()
    db.session.add(
        Attempt(delivery_id=delivery.id, number=1, outcome="http_error", error=f"{MARKER} error")
    )
    token, _ = ApiToken.issue(db.session.get(User, token_user_id or user.id), f"{MARKER} token")
    task = Task(
        account_id=account_id,
        user_id=token_user_id or user.id,
        title=f"{MARKER} task",
        record_model="deal",
        record_id=deal.id,
        due_on=date.today(),
    )
    db.session.add(task)
    db.session.commit()
    return {
        "task_id": task.id,
        "token_id": token.id,
        "user_id": user.id,
        "automation_id": automation.id,
        "delivery_id": delivery.id,
        "record_id": {"people": person.id, "companies": company.id, "deals": deal.id},
    }


_counter = iter(range(1, 1_000_000))


@functools.cache
def password_hash():
    """Hash PASSWORD once: hashing on purpose takes a while, and rows are made often."""
    return generate_password_hash(PASSWORD)


def _next():
    return next(_counter)


def account_fingerprint(account_id):
    """Hash every row that belongs to the account, so any change shows."""
    digest = hashlib.sha256()
    for model in (User, Person, Company, Deal, Automation, Event, Delivery, ApiToken, Task):
        rows = db.session.scalars(
            db.select(model).where(model.account_id == account_id).order_by(model.id)
        ).all()
        for row in rows:
            columns = {c.name: str(getattr(row, c.name)) for c in model.__table__.columns}
            digest.update(json.dumps(columns, sort_keys=True).encode())
    actions = db.session.scalars(
        db.select(Action).join(Automation).where(Automation.account_id == account_id)
    ).all()
    attempts = db.session.scalars(
        db.select(Attempt).join(Delivery).where(Delivery.account_id == account_id)
    ).all()
    for row in [*actions, *attempts]:
        columns = {c.name: str(getattr(row, c.name)) for c in row.__table__.columns}
        digest.update(json.dumps(columns, sort_keys=True).encode())
    db.session.remove()
    return digest.hexdigest()


def queued_jobs():
    """Return (function, arguments) of every job that is queued or scheduled."""
    connection = queue.get_redis()
    jobs = set()
    for rq_queue in queue.all_queues():
        job_ids = rq_queue.job_ids + rq_queue.scheduled_job_registry.get_job_ids()
        for job in Job.fetch_many(job_ids, connection=connection):
            if job is not None:
                jobs.add((job.func_name, tuple(job.args)))
    return jobs


def account_job_arguments(account_id):
    """Return the ids that a job touching the account would carry."""
    events = db.session.scalars(db.select(Event.id).where(Event.account_id == account_id))
    deliveries = db.session.scalars(db.select(Delivery.id).where(Delivery.account_id == account_id))
    return {*events, *deliveries}


@pytest.fixture
def visitors(app):
    """Log in one client per role in the first account and an admin of another account.

    Return the first account's id, the clients, an API token for each visitor, and
    each visitor's user id.
    """
    with app.app_context():
        home = Account(name=f"{MARKER} Ltd")
        other = Account(name="Other Ltd")
        db.session.add_all([home, other])
        db.session.flush()
        emails = {}
        tokens = {}
        user_ids = {}
        for account, role in [(home, "admin"), (home, "manager"), (home, "rep"), (other, "admin")]:
            visitor = "other" if account is other else role
            email = f"{role}-{account.id}@example.com"
            user = User(
                account_id=account.id, email=email, role=role, password_hash=password_hash()
            )
            db.session.add(user)
            db.session.flush()
            _, tokens[visitor] = ApiToken.issue(user, f"{visitor} token")
            emails[visitor] = email
            user_ids[visitor] = user.id
        db.session.commit()
        home_id = home.id

    clients = {}
    for visitor, email in emails.items():
        client = app.test_client()
        login(client, email)
        clients[visitor] = client
    clients["anonymous"] = app.test_client()
    return home_id, clients, tokens, user_ids


def url_for_new_rows(app, account_id, path, endpoint, method, collection, token_user_id=None):
    """Create fresh rows in the account and return the route's URL naming them.

    Also return whether the URL names a row, so that another account must get 404.
    """
    with app.app_context():
        ids = make_rows(account_id, token_user_id)
    rule = rule_for(app, path, endpoint)
    values = {}
    for argument in rule.arguments:
        if argument == "collection":
            values[argument] = collection
        elif argument == "record_id":
            values[argument] = ids["record_id"][collection]
        elif argument in ids:
            values[argument] = ids[argument]
        else:
            values[argument] = FIXED_VALUES[argument]
    url = app.url_map.bind("localhost").build(endpoint, values, method=method)
    return url, bool(set(rule.arguments) & ROW_ARGUMENTS)


def request(client, method, url, collection=None, token=None):
    """Send the request as a browser on this site would, and read the whole body.

    An API request sends a JSON body when it has one, and the token, if given,
    as a Bearer token.
    """
    if url.startswith(API_PREFIX):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = API_BODIES.get(collection) if method in ("POST", "PATCH") else None
        response = client.open(url, method=method, json=body, headers=headers)
    elif method == "GET":
        response = client.get(url)
    else:
        origin = {"Origin": "http://localhost"}
        response = client.open(url, method=method, data=FORM_DATA, headers=origin)
    response.get_data()
    response.close()
    return response


def test_every_route_has_a_decision():
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})

    undecided = sorted({r.endpoint for r in app.url_map.iter_rules() if access_for(r) is None})

    assert undecided == [], f"add these endpoints to ACCESS in {__file__}"


@pytest.mark.parametrize(("path", "endpoint", "method", "collection"), route_cases())
def test_route_access(app, visitors, path, endpoint, method, collection):
    home_id, clients, tokens, user_ids = visitors
    # The API serves several endpoints at one path, one for each method.
    allowed = access_for(rule_for(app, path, endpoint))
    assert allowed is not None, f"{endpoint} has no entry in ACCESS"
    api = path.startswith(API_PREFIX)

    def visit(visitor, url):
        # API visitors send their token from a client without session cookies.
        if api:
            return request(clients["anonymous"], method, url, collection, tokens.get(visitor))
        return request(clients[visitor], method, url, collection)

    def new_url(token_user_id=None):
        return url_for_new_rows(app, home_id, path, endpoint, method, collection, token_user_id)

    # Another account's admin: 404 for this account's ids, no data shown, nothing changed.
    url, names_rows = new_url(user_ids["admin"])
    with app.app_context():
        fingerprint = account_fingerprint(home_id)
        jobs = queued_jobs()
    response = visit("other", url)
    with app.app_context():
        new_jobs = queued_jobs() - jobs
        home_ids = account_job_arguments(home_id)
        assert account_fingerprint(home_id) == fingerprint
    assert response.status_code < 500, response.text
    assert MARKER.encode() not in response.get_data()
    assert [job for job in new_jobs if set(job[1]) & home_ids] == []
    if names_rows and allowed != PUBLIC:
        assert response.status_code == 404

    if allowed == PUBLIC:
        url, _ = new_url()
        assert request(clients["anonymous"], method, url, collection).status_code < 400
        return

    url, _ = new_url()
    anonymous = request(clients["anonymous"], method, url, collection)
    if api:
        assert anonymous.status_code == 401
        assert anonymous.get_json()["error"]["status"] == 401
        # A logged-in browser's session cookie does not count as a token.
        url, _ = new_url()
        with_cookie = request(clients["admin"], method, url, collection)
        assert with_cookie.status_code == 401
    else:
        assert anonymous.status_code == 302
        assert "/login" in anonymous.headers["Location"]

    for role in ("rep", "manager", "admin"):
        url, _ = new_url(user_ids[role])
        response = visit(role, url)
        assert response.status_code < 500, (role, response.text)
        if role in allowed:
            assert response.status_code != 403, role
            if names_rows:
                assert response.status_code != 404, role
        else:
            assert response.status_code == 403, role
