"""People, companies and deals: pages, and the Event written with each change."""

import pytest

from pdauto import create_app
from pdauto.extensions import db
from pdauto.models import Company, Deal, Event, Person
from tests.conftest import login

FORMS = {
    "people": (
        {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"},
        Person,
    ),
    "companies": ({"name": "Initech", "website": "https://initech.test"}, Company),
    "deals": (
        {"name": "Big deal", "value": "12000", "status": "open", "stage": "proposal"},
        Deal,
    ),
}


def events_of(app):
    with app.app_context():
        return [
            (event.model, event.action, event.record_id, event.changes)
            for event in db.session.scalars(db.select(Event).order_by(Event.id))
        ]


@pytest.mark.parametrize("collection", FORMS)
def test_create_edit_delete_write_events(app, manager_client, collection):
    data, record_class = FORMS[collection]

    response = manager_client.post(f"/{collection}/new", data=data)
    assert response.status_code == 302
    with app.app_context():
        record = db.session.scalar(db.select(record_class))
        record_id = record.id
        model = record.event_model

    edited = dict(data)
    first_field = next(iter(data))
    edited[first_field] = data[first_field] + " II"
    response = manager_client.post(f"/{collection}/{record_id}/edit", data=edited)
    assert response.status_code == 302

    response = manager_client.post(f"/{collection}/{record_id}/delete")
    assert response.status_code == 302

    recorded = events_of(app)
    assert [(m, a, r) for m, a, r, _ in recorded] == [
        (model, "created", record_id),
        (model, "updated", record_id),
        (model, "deleted", record_id),
    ]
    assert recorded[1][3] == {first_field: [data[first_field], data[first_field] + " II"]}


def test_edit_without_change_writes_no_event(app, manager_client):
    data, _ = FORMS["people"]
    manager_client.post("/people/new", data=data)
    with app.app_context():
        person_id = db.session.scalar(db.select(Person.id))

    response = manager_client.post(f"/people/{person_id}/edit", data=data)

    assert response.status_code == 302
    assert [action for _, action, _, _ in events_of(app)] == ["created"]


def test_failed_commit_keeps_neither_record_nor_event(app, users):
    from pdauto import crm

    with app.app_context():
        account_id = users["manager"][2]
        # first_name is NOT NULL, so the INSERT fails and nothing is kept.
        with pytest.raises(Exception):  # noqa: B017  (the driver's IntegrityError)
            crm.create_record("person", account_id, {"first_name": None})
        db.session.rollback()
        assert db.session.scalar(db.select(db.func.count(Person.id))) == 0
        assert db.session.scalar(db.select(db.func.count(Event.id))) == 0


def test_invalid_form_shows_message(manager_client):
    response = manager_client.post("/people/new", data={"first_name": "", "email": "nope"})

    assert response.status_code == 200
    assert "This field is required." in response.text
    assert "Invalid email address." in response.text


def test_other_account_record_is_not_found(app, users, manager_client):

    other = app.test_client()
    login(other, users["other"][1])
    other.post("/people/new", data={"first_name": "Secret"})
    with app.app_context():
        person_id = db.session.scalar(db.select(Person.id))

    assert manager_client.get(f"/people/{person_id}/edit").status_code == 404
    assert manager_client.post(f"/people/{person_id}/delete").status_code == 404
    assert "Secret" not in manager_client.get("/people").text


def test_pages_need_login(client):
    for path in ("/", "/people", "/companies/new", "/deals", "/automations/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert "/login" in response.headers["Location"], path


def test_session_cookie_flags(tmp_path, redis_server):
    plain = create_app({"TESTING": True, "PDAUTO_BASE_URL": "http://127.0.0.1:5000"})
    served_over_https = create_app({"TESTING": True, "PDAUTO_BASE_URL": "https://crm.example.com"})

    assert plain.config["SESSION_COOKIE_SECURE"] is False
    assert served_over_https.config["SESSION_COOKIE_SECURE"] is True
    assert served_over_https.config["SESSION_COOKIE_HTTPONLY"] is True
    assert served_over_https.config["SESSION_COOKIE_SAMESITE"] == "Lax"


def test_login_cookie_header(client, users):
    response = login(client, users["manager"][1])

    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
