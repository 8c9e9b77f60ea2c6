"""The JSON API: tokens, records and their events, automations, deliveries and errors."""

import functools
import hashlib
import logging
import re

import pytest
from werkzeug.security import generate_password_hash

from pdauto.extensions import db
from pdauto.models import (
    Account,
    ApiToken,
    Attempt,
    Company,
    Deal,
    Delivery,
    Event,
    Person,
    User,
)
from pdauto.views import api
from tests.conftest import PASSWORD, csrf_token_from, run_jobs
from tests.factories import make_automation

RECORDS = {
    "people": (
        Person,
        {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"},
        {"phone": "+44 20 7946 0000"},
    ),
    "companies": (
        Company,
        {"name": "Initech", "website": "https://initech.test"},
        {"name": "Initrode"},
    ),
    "deals": (
        Deal,
        {"name": "Big deal", "value": 12000, "status": "open", "stage": "proposal"},
        {"status": "won", "value": 12500.5},
    ),
}


@pytest.fixture
def app_overrides():
    # With CSRF protection on, as in production, tokens must work and session cookies must not.
    return {"WTF_CSRF_ENABLED": True}


@functools.cache
def password_hash():
    """Hash PASSWORD once: hashing on purpose takes a while, and each test makes users."""
    return generate_password_hash(PASSWORD)


@pytest.fixture
def users(app):
    """Create the conftest's users with one cached password hash, for speed.

    They are a manager, an admin and a rep of Acme and a manager of Globex.
    """
    created = {}
    with app.app_context():
        for key, role, account_name in [
            ("manager", "manager", "Acme"),
            ("admin", "admin", "Acme"),
            ("rep", "rep", "Acme"),
            ("other", "manager", "Globex"),
        ]:
            account = db.session.scalar(db.select(Account).where(Account.name == account_name))
            if account is None:
                account = Account(name=account_name)
                db.session.add(account)
            user = User(
                account=account,
                email=f"{key}@{account_name.lower()}.example.com",
                role=role,
                password_hash=password_hash(),
            )
            db.session.add(user)
            db.session.commit()
            created[key] = (user.id, user.email, user.account_id)
    return created


def issue_token(app, user_id, name="test"):
    with app.app_context():
        _, text = ApiToken.issue(db.session.get(User, user_id), name)
        db.session.commit()
    return text


@pytest.fixture
def tokens(app, users):
    """An API token for each user of the `users` fixture."""
    return {key: issue_token(app, user_id) for key, (user_id, _, _) in users.items()}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def logged_in(app, email):
    client = app.test_client()
    token = csrf_token_from(client.get("/login").text)
    response = client.post(
        "/login", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302
    return client


def error_of(response):
    assert response.is_json, response.text
    return response.get_json()["error"]


def events_of(app):
    with app.app_context():
        return [
            (event.model, event.action, event.record_id, event.changes)
            for event in db.session.scalars(db.select(Event).order_by(Event.id))
        ]


# --- Tokens ---


def test_token_stored_as_hash(app, users):
    text = issue_token(app, users["rep"][0])

    with app.app_context():
        row = db.session.scalar(db.select(ApiToken))
        assert row.token_hash == hashlib.sha256(text.encode()).hexdigest()
        assert text.startswith("pdt_")
        assert row.prefix == text[:12]
        stored = " ".join(str(getattr(row, c.name)) for c in ApiToken.__table__.columns)
    assert text not in stored


def test_token_ui_shows_token_once(app, users, caplog):
    caplog.set_level(logging.DEBUG)
    client = logged_in(app, users["rep"][1])
    form = client.get("/api-tokens/new")
    assert form.status_code == 200

    created = client.post(
        "/api-tokens/new",
        data={"name": "Invoicing sync", "csrf_token": csrf_token_from(form.text)},
    )

    assert created.status_code == 200
    assert created.headers["Cache-Control"] == "no-store"
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken))
        prefix = row.prefix
        assert row.user_id == users["rep"][0]
        assert row.name == "Invoicing sync"
    text = re.search(r'id="api-token"[^>]* value="([^"]+)"', created.text).group(1)
    assert text.startswith(prefix)
    assert client.get("/api/v1/people", headers=bearer(text)).status_code == 200
    listing = client.get("/api-tokens").text
    assert "Invoicing sync" in listing
    assert prefix in listing
    assert text not in listing
    assert text not in caplog.text


def test_token_ui_requires_name(app, users):
    client = logged_in(app, users["rep"][1])
    form = client.get("/api-tokens/new")

    response = client.post(
        "/api-tokens/new", data={"name": " ", "csrf_token": csrf_token_from(form.text)}
    )

    assert response.status_code == 422
    assert "Name the token." in response.text
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(ApiToken.id))) == 0


def test_token_ui_revoke(app, users):
    text = issue_token(app, users["rep"][0])
    client = logged_in(app, users["rep"][1])
    listing = client.get("/api-tokens")
    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id))

    response = client.post(
        f"/api-tokens/{token_id}/revoke", data={"csrf_token": csrf_token_from(listing.text)}
    )

    assert response.status_code == 302
    assert client.get("/api/v1/people", headers=bearer(text)).status_code == 401
    assert "revoked" in client.get("/api-tokens").text


def test_token_ui_cannot_revoke_colleagues(app, users):
    text = issue_token(app, users["rep"][0])
    client = logged_in(app, users["admin"][1])
    listing = client.get("/api-tokens")
    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id))

    response = client.post(
        f"/api-tokens/{token_id}/revoke", data={"csrf_token": csrf_token_from(listing.text)}
    )

    assert response.status_code == 404
    assert client.get("/api/v1/people", headers=bearer(text)).status_code == 200
    assert f"/api-tokens/{token_id}/revoke" not in client.get("/api-tokens").text


def test_last_used_recorded(app, users, tokens):
    client = app.test_client()
    with app.app_context():
        assert db.session.scalar(db.select(ApiToken.last_used_at)) is None

    client.get("/api/v1/people", headers=bearer(tokens["rep"]))

    with app.app_context():
        row = db.session.scalar(db.select(ApiToken).where(ApiToken.user_id == users["rep"][0]))
        assert row.last_used_at is not None


# --- Authentication ---


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer pdt_" + "A" * 43,
        "Bearer not-a-token",
        "Bearer pdt_\u00e9" + "A" * 42,
    ],
)
def test_missing_or_unknown_token_401(client, users, header):
    headers = {} if header is None else {"Authorization": header}

    response = client.get("/api/v1/people", headers=headers)

    assert response.status_code == 401
    assert error_of(response)["status"] == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_session_cookie_without_token_401(app, users):
    client = logged_in(app, users["admin"][1])
    assert client.get("/people").status_code == 200

    listed = client.get("/api/v1/people")
    created = client.post("/api/v1/people", json={"first_name": "Eve"})

    assert listed.status_code == 401
    assert created.status_code == 401
    assert error_of(created)["status"] == 401
    assert events_of(app) == []


def test_token_skips_csrf_sets_no_cookie(client, tokens):
    response = client.post(
        "/api/v1/people", json={"first_name": "Eve"}, headers=bearer(tokens["rep"])
    )

    assert response.status_code == 201
    assert "Set-Cookie" not in response.headers


def test_revoked_token_401(app, client, users, tokens):
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken).where(ApiToken.user_id == users["rep"][0]))
        row.revoked_at = row.created_at
        db.session.commit()

    response = client.get("/api/v1/people", headers=bearer(tokens["rep"]))

    assert response.status_code == 401


def test_deactivated_user_401(app, client, users, tokens):
    with app.app_context():
        db.session.get(User, users["rep"][0]).active = False
        db.session.commit()

    response = client.get("/api/v1/people", headers=bearer(tokens["rep"]))

    assert response.status_code == 401
    with app.app_context():
        db.session.get(User, users["rep"][0]).active = True
        db.session.commit()
    assert client.get("/api/v1/people", headers=bearer(tokens["rep"])).status_code == 200


def test_role_change_applies_at_once(app, client, users, tokens):
    with app.app_context():
        delivery_id = make_delivery(users["rep"][2])
    url = f"/api/v1/deliveries/{delivery_id}/redeliver"
    assert client.post(url, headers=bearer(tokens["rep"])).status_code == 403

    with app.app_context():
        db.session.get(User, users["rep"][0]).role = "manager"
        db.session.commit()

    assert client.post(url, headers=bearer(tokens["rep"])).status_code == 202


# --- Records ---


@pytest.mark.parametrize("collection", RECORDS)
def test_record_crud(app, client, users, tokens, collection):
    record_class, fields, changes = RECORDS[collection]
    headers = bearer(tokens["rep"])

    created = client.post(f"/api/v1/{collection}", json=fields, headers=headers)
    assert created.status_code == 201, created.text
    record = created.get_json()
    assert {name: record[name] for name in fields} == fields
    assert record["owner_id"] == users["rep"][0]
    assert created.headers["Location"] == f"/api/v1/{collection}/{record['id']}"
    url = created.headers["Location"]

    read = client.get(url, headers=headers)
    assert read.status_code == 200
    assert read.get_json() == record

    listed = client.get(f"/api/v1/{collection}", headers=headers).get_json()
    assert [item["id"] for item in listed["data"]] == [record["id"]]
    assert listed["total"] == 1

    updated = client.patch(url, json=changes, headers=headers)
    assert updated.status_code == 200, updated.text
    body = updated.get_json()
    assert {name: body[name] for name in changes} == changes
    with app.app_context():
        row = db.session.get(record_class, record["id"])
        for name, value in changes.items():
            assert getattr(row, name) == value

    deleted = client.delete(url, headers=headers)
    assert deleted.status_code == 204
    assert deleted.data == b""
    assert client.get(url, headers=headers).status_code == 404
    with app.app_context():
        assert db.session.get(record_class, record["id"]) is None


@pytest.mark.parametrize("collection", RECORDS)
def test_record_events_fired(app, client, tokens, collection):
    _, fields, changes = RECORDS[collection]
    headers = bearer(tokens["rep"])

    record = client.post(f"/api/v1/{collection}", json=fields, headers=headers).get_json()
    url = f"/api/v1/{collection}/{record['id']}"
    client.patch(url, json=changes, headers=headers)
    client.delete(url, headers=headers)

    recorded = events_of(app)
    model = api.COLLECTIONS[collection]
    assert [(m, a, r) for m, a, r, _ in recorded] == [
        (model, "created", record["id"]),
        (model, "updated", record["id"]),
        (model, "deleted", record["id"]),
    ]
    updated_changes = recorded[1][3]
    assert sorted(updated_changes) == sorted(changes)
    for name, value in changes.items():
        assert updated_changes[name][1] == value


UI_FORMS = {
    "people": {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"},
    "companies": {"name": "Initech", "website": "https://initech.test"},
    "deals": {"name": "Big deal", "value": "12000", "status": "open", "stage": "proposal"},
}


@pytest.mark.parametrize("collection", RECORDS)
def test_api_events_match_ui(app, users, tokens, collection):
    """The same change made on the web page and through the API writes the same Event."""
    _, fields, _ = RECORDS[collection]
    browser = logged_in(app, users["rep"][1])
    form_page = browser.get(f"/{collection}/new")
    data = dict(UI_FORMS[collection], csrf_token=csrf_token_from(form_page.text))
    assert browser.post(f"/{collection}/new", data=data).status_code == 302
    client = app.test_client()

    response = client.post(f"/api/v1/{collection}", json=fields, headers=bearer(tokens["rep"]))

    assert response.status_code == 201
    ui_event, api_event = events_of(app)
    assert ui_event[:2] == api_event[:2]
    assert ui_event[3] == api_event[3]


def test_patch_without_change_writes_no_event(app, client, tokens):
    headers = bearer(tokens["rep"])
    record = client.post("/api/v1/people", json={"first_name": "Ada"}, headers=headers)
    url = record.headers["Location"]

    for body in ({}, {"first_name": "Ada"}, {"first_name": "  Ada  "}):
        response = client.patch(url, json=body, headers=headers)
        assert response.status_code == 200
        assert response.get_json()["first_name"] == "Ada"

    assert [action for _, action, _, _ in events_of(app)] == ["created"]


def test_created_deal_triggers_webhook(app, client, users, tokens, receiver):
    with app.app_context():
        make_automation(users["rep"][2], receiver.url("/hook"), event_model="deal")

    response = client.post(
        "/api/v1/deals", json={"name": "Won deal", "value": 10}, headers=bearer(tokens["rep"])
    )
    run_jobs(app)

    [request] = receiver.wait_for_requests(1)
    body = request.json()
    assert body["event_model"] == "deal"
    assert body["event_action"] == "created"
    assert body["event_model_id"] == response.get_json()["id"]


def test_create_defaults(client, users, tokens):
    response = client.post("/api/v1/deals", json={"name": "Bare"}, headers=bearer(tokens["rep"]))

    assert response.status_code == 201
    deal = response.get_json()
    assert deal["value"] == 0
    assert deal["status"] == "open"
    assert deal["stage"] == ""
    assert deal["company_id"] is None


def test_value_rounded_to_cents(client, tokens):
    headers = bearer(tokens["rep"])

    response = client.post("/api/v1/deals", json={"name": "Odd", "value": 10.005}, headers=headers)

    assert response.status_code == 201
    assert response.get_json()["value"] == 10.01


def test_references_within_account(app, client, users, tokens):
    headers = bearer(tokens["rep"])
    company = client.post("/api/v1/companies", json={"name": "Acme"}, headers=headers).get_json()
    person = client.post(
        "/api/v1/people",
        json={"first_name": "Ada", "company_id": company["id"], "owner_id": users["admin"][0]},
        headers=headers,
    )
    assert person.status_code == 201
    assert person.get_json()["company_id"] == company["id"]
    assert person.get_json()["owner_id"] == users["admin"][0]

    cleared = client.patch(person.headers["Location"], json={"company_id": None}, headers=headers)

    assert cleared.status_code == 200
    assert cleared.get_json()["company_id"] is None


def test_references_to_other_account_422(app, client, users, tokens):
    other = client.post(
        "/api/v1/companies", json={"name": "Globex"}, headers=bearer(tokens["other"])
    ).get_json()

    response = client.post(
        "/api/v1/deals",
        json={"name": "Steal", "company_id": other["id"], "owner_id": users["other"][0]},
        headers=bearer(tokens["rep"]),
    )

    assert response.status_code == 422
    fields = error_of(response)["fields"]
    assert fields["company_id"] == [f"No company with id {other['id']} in this account."]
    assert fields["owner_id"] == [f"No user with id {users['other'][0]} in this account."]


# --- Pagination ---


def test_pagination(client, tokens):
    headers = bearer(tokens["rep"])
    ids = [
        client.post("/api/v1/people", json={"first_name": f"P{n}"}, headers=headers).get_json()[
            "id"
        ]
        for n in range(7)
    ]

    seen = []
    url = "/api/v1/people?per_page=3"
    pages = 0
    while url and pages < 10:
        body = client.get(url, headers=headers).get_json()
        assert body["total"] == 7
        assert body["per_page"] == 3
        seen.extend(item["id"] for item in body["data"])
        url = body["next"]
        pages += 1

    assert pages == 3
    assert seen == ids


def test_default_page_size(client, tokens):
    body = client.get("/api/v1/people", headers=bearer(tokens["rep"])).get_json()

    assert body["page"] == 1
    assert body["per_page"] == 25
    assert body["next"] is None


def test_page_past_end_empty(client, tokens):
    headers = bearer(tokens["rep"])
    client.post("/api/v1/people", json={"first_name": "Ada"}, headers=headers)

    body = client.get("/api/v1/people?page=999999999&per_page=100", headers=headers).get_json()

    assert body["data"] == []
    assert body["total"] == 1
    assert body["next"] is None


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "page=",
        "per_page=0",
        "per_page=101",
        "page=1000000000",
        "page=%D9%A3",
        "per_page=1_0",
    ],
)
def test_bad_page_arguments_400(client, tokens, query):
    response = client.get(f"/api/v1/people?{query}", headers=bearer(tokens["rep"]))

    assert response.status_code == 400
    assert "must be a whole number" in error_of(response)["message"]


# --- Errors ---


def test_bad_json_400(client, tokens):
    headers = bearer(tokens["rep"])

    for body in (b"{bad", b"", b'{"first_name": NaN}', b'{"value": Infinity}', b"\xff\xfe{"):
        response = client.post(
            "/api/v1/people", data=body, content_type="application/json", headers=headers
        )
        assert response.status_code == 400, body
        assert error_of(response)["message"].startswith("The body is not valid JSON"), body


def test_deeply_nested_json_400(client, tokens):
    body = b"[" * 30_000 + b"]" * 30_000

    response = client.post(
        "/api/v1/people", data=body, content_type="application/json", headers=bearer(tokens["rep"])
    )

    assert response.status_code == 400


def test_body_too_large_413(client, tokens):
    body = {"first_name": "A", "last_name": "x" * (api.MAX_BODY_BYTES + 1)}

    response = client.post("/api/v1/people", json=body, headers=bearer(tokens["rep"]))

    assert response.status_code == 413
    assert error_of(response)["status"] == 413


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ({"first_name": "Ada"}, None),
        ("first_name=Ada", "application/x-www-form-urlencoded"),
        ('{"first_name": "Ada"}', "text/plain"),
        (None, None),
    ],
)
def test_non_json_body_415(client, tokens, data, content_type):
    kwargs = {"data": data}
    if content_type:
        kwargs["content_type"] = content_type

    response = client.post("/api/v1/people", headers=bearer(tokens["rep"]), **kwargs)

    assert response.status_code == 415
    assert "application/json" in error_of(response)["message"]


def test_method_not_allowed_405(client, tokens):
    response = client.put("/api/v1/people/1", json={}, headers=bearer(tokens["rep"]))

    assert response.status_code == 405
    assert error_of(response)["status"] == 405
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}


def test_unknown_api_url_json_404(client, tokens):
    for url in ("/api/v1/nothing", "/api/v2/people", "/api/v1/people/abc", "/api/v1/people/-1"):
        response = client.get(url, headers=bearer(tokens["rep"]))
        assert response.status_code == 404, url
        assert error_of(response)["status"] == 404, url


def test_pages_keep_html_errors(app, users):
    client = logged_in(app, users["rep"][1])

    response = client.get("/people/999/edit")

    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_huge_id_404(client, tokens):
    for url in ("/api/v1/people/99999999999999999999999", "/api/v1/automations/2147483648"):
        response = client.get(url, headers=bearer(tokens["rep"]))
        assert response.status_code == 404, url


INVALID_BODIES = [
    ("people", {}, "first_name", "This field is required."),
    ("people", {"first_name": "   "}, "first_name", "This field is required."),
    ("people", {"first_name": 5}, "first_name", "Must be a string."),
    ("people", {"first_name": None}, "first_name", "Must be a string."),
    ("people", {"first_name": "x" * 101}, "first_name", "Field cannot be longer than 100"),
    ("people", {"first_name": "A", "email": "not-an-email"}, "email", "Invalid email address."),
    ("people", {"first_name": "A\x00B"}, "first_name", "Must not contain NUL characters."),
    ("people", {"first_name": "A\ud800"}, "first_name", "Must be valid Unicode text."),
    ("people", {"first_name": "A", "id": 5}, "id", "Unknown or read-only field."),
    ("people", {"first_name": "A", "nickname": "x"}, "nickname", "Unknown or read-only field."),
    ("people", {"first_name": "A", "company_id": "1"}, "company_id", "Must be an integer id"),
    ("people", {"first_name": "A", "company_id": True}, "company_id", "Must be an integer id"),
    ("people", {"first_name": "A", "company_id": 99}, "company_id", "No company with id 99"),
    ("people", {"first_name": "A", "owner_id": 2**40}, "owner_id", "No user with id"),
    ("companies", {"name": ["x"]}, "name", "Must be a string."),
    ("deals", {"name": "D", "value": -1}, "value", "Number must be between 0"),
    ("deals", {"name": "D", "value": 1e13}, "value", "Number must be between 0"),
    ("deals", {"name": "D", "value": "12"}, "value", "Must be a number."),
    ("deals", {"name": "D", "value": True}, "value", "Must be a number."),
    ("deals", {"name": "D", "status": "maybe"}, "status", "Not a valid choice"),
    ("deals", {"name": "D", "person_id": 0}, "person_id", "No person with id 0"),
]


@pytest.mark.parametrize(("collection", "body", "field", "message"), INVALID_BODIES)
def test_invalid_fields_422(app, client, tokens, collection, body, field, message):
    response = client.post(f"/api/v1/{collection}", json=body, headers=bearer(tokens["rep"]))

    assert response.status_code == 422
    error = error_of(response)
    assert error["status"] == 422
    assert field in error["message"]
    assert any(text.startswith(message) for text in error["fields"][field]), error["fields"]
    assert events_of(app) == []


def test_huge_number_literal_422(client, tokens):
    response = client.post(
        "/api/v1/deals",
        data=b'{"name": "D", "value": 1e999}',
        content_type="application/json",
        headers=bearer(tokens["rep"]),
    )

    assert response.status_code == 422
    assert "value" in error_of(response)["fields"]


def test_invalid_patch_changes_nothing(app, client, tokens):
    headers = bearer(tokens["rep"])
    url = client.post("/api/v1/deals", json={"name": "D"}, headers=headers).headers["Location"]

    response = client.patch(url, json={"name": "", "stage": "won"}, headers=headers)

    assert response.status_code == 422
    assert list(error_of(response)["fields"]) == ["name"]
    assert client.get(url, headers=headers).get_json()["stage"] == ""
    assert [action for _, action, _, _ in events_of(app)] == ["created"]


@pytest.mark.parametrize("body", ["[]", '"text"', "5", "null"])
def test_non_object_body_422(client, tokens, body):
    response = client.post(
        "/api/v1/people", data=body, content_type="application/json", headers=bearer(tokens["rep"])
    )

    assert response.status_code == 422
    assert error_of(response)["message"] == "The body must be a JSON object."


# --- Other accounts ---


def test_other_account_ids_404(app, client, users, tokens):
    headers = bearer(tokens["other"])
    account_id = users["rep"][2]
    with app.app_context():
        delivery_id = make_delivery(account_id)
        delivery = db.session.get(Delivery, delivery_id)
        automation_id = delivery.automation_id
        person = Person(account_id=account_id, first_name="Private")
        db.session.add(person)
        db.session.commit()
        person_id = person.id
    events_before = events_of(app)

    requests = [
        ("GET", f"/api/v1/people/{person_id}"),
        ("PATCH", f"/api/v1/people/{person_id}"),
        ("DELETE", f"/api/v1/people/{person_id}"),
        ("GET", f"/api/v1/automations/{automation_id}"),
        ("GET", f"/api/v1/automations/{automation_id}/deliveries"),
        ("GET", f"/api/v1/deliveries/{delivery_id}"),
        ("POST", f"/api/v1/deliveries/{delivery_id}/redeliver"),
    ]
    for method, url in requests:
        response = client.open(url, method=method, json={"first_name": "Mallory"}, headers=headers)
        assert response.status_code == 404, (method, url)
        assert "Private" not in response.text

    listed = client.get("/api/v1/people", headers=headers).get_json()
    assert listed["data"] == []
    with app.app_context():
        assert db.session.get(Person, person_id).first_name == "Private"
        assert db.session.get(Delivery, delivery_id).state == "failed"
    assert events_of(app) == events_before


# --- Automations and deliveries ---


def make_delivery(account_id, state="failed", url="http://127.0.0.1:9/hook"):
    """Create an automation, an event and a failed delivery with one attempt; return its id."""
    automation = make_automation(account_id, url)
    event = Event(account_id=account_id, model="deal", action="created", record_id=1)
    db.session.add(event)
    db.session.flush()
    delivery = Delivery(
        account_id=account_id,
        event_id=event.id,
        action_id=automation.actions[0].id,
        automation_id=automation.id,
        state=state,
        attempt_count=1,
        last_status=500,
    )
    db.session.add(delivery)
    db.session.flush()
    db.session.add(
        Attempt(
            delivery_id=delivery.id,
            number=1,
            outcome="http_error",
            response_status=500,
            request_url=url,
            request_headers={"Authorization": "Bearer ***"},
            error="HTTP 500",
        )
    )
    db.session.commit()
    return delivery.id


def test_automation_hides_secrets(app, client, users, tokens):
    custom = {"Authorization": "Bearer receiver-api-key-123", "X-Env": "prod"}
    with app.app_context():
        automation = make_automation(
            users["rep"][2],
            "https://hookuser:hook-password-456@hooks.example.test/in",
            custom_headers=custom,
            previous_signing_secret="whsec_" + "B" * 44,
        )
        action = automation.actions[0]
        secrets = [action.signing_secret, action.previous_signing_secret]
        automation_id = automation.id

    for url in ("/api/v1/automations", f"/api/v1/automations/{automation_id}"):
        response = client.get(url, headers=bearer(tokens["rep"]))
        assert response.status_code == 200
        for secret in [*secrets, "hook-password-456", "receiver-api-key-123", "prod", "whsec_"]:
            assert secret not in response.text, (url, secret)

    automation = client.get(
        f"/api/v1/automations/{automation_id}", headers=bearer(tokens["rep"])
    ).get_json()
    [action] = automation["actions"]
    assert action["url"] == "https://hookuser:***@hooks.example.test/in"
    assert action["custom_header_names"] == ["Authorization", "X-Env"]
    assert automation["state"] == "active"


def test_automation_list_skips_deleted(app, client, users, tokens):
    with app.app_context():
        kept = make_automation(users["rep"][2], "http://127.0.0.1:9/a", name="Kept").id
        gone = make_automation(users["rep"][2], "http://127.0.0.1:9/b", name="Gone")
        gone.deleted_at = gone.created_at
        gone.active = False
        db.session.commit()
        gone_id = gone.id
    headers = bearer(tokens["rep"])

    listed = client.get("/api/v1/automations", headers=headers).get_json()
    deleted = client.get(f"/api/v1/automations/{gone_id}", headers=headers)

    assert [item["id"] for item in listed["data"]] == [kept]
    assert deleted.status_code == 200
    assert deleted.get_json()["state"] == "deleted"


def test_delivery_log_and_redeliver(app, client, users, tokens, receiver):
    receiver.respond("/hook", status=500, body="down")
    with app.app_context():
        automation_id = make_automation(users["rep"][2], receiver.url("/hook")).id
    client.post("/api/v1/deals", json={"name": "D"}, headers=bearer(tokens["rep"]))
    run_jobs(app)
    headers = bearer(tokens["manager"])

    listed = client.get(f"/api/v1/automations/{automation_id}/deliveries", headers=headers)
    assert listed.status_code == 200
    [delivery] = listed.get_json()["data"]
    assert delivery["event"]["model"] == "deal"
    detail = client.get(f"/api/v1/deliveries/{delivery['id']}", headers=headers).get_json()
    assert [attempt["response_status"] for attempt in detail["attempts"]] == [500]
    assert detail["attempts"][0]["response_body"] == "down"

    receiver.respond("/hook", status=200)
    redelivered = client.post(f"/api/v1/deliveries/{delivery['id']}/redeliver", headers=headers)
    assert redelivered.status_code == 202
    assert redelivered.get_json()["state"] == "pending"
    run_jobs(app)

    detail = client.get(f"/api/v1/deliveries/{delivery['id']}", headers=headers).get_json()
    assert [attempt["response_status"] for attempt in detail["attempts"]] == [500, 200]
    assert detail["state"] == "succeeded"
    requests = receiver.wait_for_requests(2)
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"] == delivery["id"]


def test_deliveries_filter_and_pages(app, client, users, tokens):
    with app.app_context():
        delivery_id = make_delivery(users["rep"][2])
        automation_id = db.session.get(Delivery, delivery_id).automation_id
    headers = bearer(tokens["rep"])
    url = f"/api/v1/automations/{automation_id}/deliveries"

    failed = client.get(f"{url}?state=failed", headers=headers).get_json()
    pending = client.get(f"{url}?state=pending", headers=headers).get_json()
    bad = client.get(f"{url}?state=lost", headers=headers)

    assert [item["id"] for item in failed["data"]] == [delivery_id]
    assert pending["data"] == []
    assert bad.status_code == 400
    assert "state must be one of" in error_of(bad)["message"]


def test_unknown_delivery_404(client, tokens):
    for delivery_id in ("msg_missing", "x" * 41, "bad%00id", "%E2%9C%93"):
        response = client.get(f"/api/v1/deliveries/{delivery_id}", headers=bearer(tokens["rep"]))
        assert response.status_code == 404, delivery_id


@pytest.mark.parametrize(("role", "status"), [("rep", 403), ("manager", 202), ("admin", 202)])
def test_redeliver_roles(app, client, users, tokens, role, status):
    with app.app_context():
        delivery_id = make_delivery(users["rep"][2])

    response = client.post(
        f"/api/v1/deliveries/{delivery_id}/redeliver", headers=bearer(tokens[role])
    )

    assert response.status_code == status
    with app.app_context():
        state = db.session.get(Delivery, delivery_id).state
    assert state == ("failed" if status == 403 else "pending")


def test_reps_read_automations_and_deliveries(app, client, users, tokens):
    with app.app_context():
        delivery_id = make_delivery(users["rep"][2])
        automation_id = db.session.get(Delivery, delivery_id).automation_id
    headers = bearer(tokens["rep"])

    for url in (
        "/api/v1/automations",
        f"/api/v1/automations/{automation_id}",
        f"/api/v1/automations/{automation_id}/deliveries",
        f"/api/v1/deliveries/{delivery_id}",
    ):
        assert client.get(url, headers=headers).status_code == 200, url


# --- The OpenAPI document ---


def test_openapi_served_without_token(client):
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_openapi_lists_every_route(app, client):
    spec = client.get("/api/v1/openapi.json").get_json()
    documented = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }

    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("api."):
            continue
        path = re.sub(r"<(?:[^<>]*:)?(\w+)>", r"{\1}", rule.rule)
        collections = api.COLLECTIONS if "collection" in rule.arguments else [None]
        for collection in collections:
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                served.add((path.replace("{collection}", collection or ""), method))

    assert documented == served


@pytest.mark.parametrize(
    ("collection", "schema"), [("people", "Person"), ("companies", "Company"), ("deals", "Deal")]
)
def test_openapi_record_fields_match(client, collection, schema):
    spec = client.get("/api/v1/openapi.json").get_json()
    model = api.COLLECTIONS[collection]
    writable = {*api.FORM_FIELDS[model], *api.REFERENCES[model]}

    create = spec["components"]["schemas"][f"{schema}Create"]
    output = spec["components"]["schemas"][schema]

    assert set(create["properties"]) == writable
    assert set(output["properties"]) == writable | {"id", "created_at", "updated_at"}
