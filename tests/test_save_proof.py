"""Save needs a signed proof of a 2xx test of the exact request settings."""

import pytest

from pdauto import proofs
from pdauto.extensions import db
from pdauto.models import Automation

URL = "https://hooks.example.test/in"


def form_data(**overrides):
    data = {
        "name": "Deal won",
        "event_model": "deal",
        "event_action": "updated",
        "url": URL,
        "failure_email": "ops@example.com",
        "content_type": "application/json",
        "test_proof": "",
    }
    data.update(overrides)
    return data


def proof_for(app, account_id, url=URL, content_type="application/json"):
    with app.test_request_context():
        fingerprint = proofs.request_fingerprint(url, content_type, {})
        return proofs.issue_proof(account_id, fingerprint)


def automation_count(app):
    with app.app_context():
        return db.session.scalar(db.select(db.func.count(Automation.id)))


def test_save_without_proof_rejected(app, manager_client):
    response = manager_client.post("/automations/new", data=form_data())

    assert response.status_code == 422
    assert "Press Test Now" in response.text
    assert automation_count(app) == 0


def test_save_with_proof_for_other_url_rejected(app, users, manager_client):
    proof = proof_for(app, users["manager"][2], url="https://hooks.example.test/other")

    response = manager_client.post("/automations/new", data=form_data(test_proof=proof))

    assert response.status_code == 422
    assert "changed after the last test" in response.text
    assert automation_count(app) == 0


def test_save_with_proof_for_other_content_type_rejected(app, users, manager_client):
    proof = proof_for(app, users["manager"][2], content_type="application/json")
    data = form_data(test_proof=proof, content_type="application/x-www-form-urlencoded")

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    assert automation_count(app) == 0


def test_save_with_proof_for_other_account_rejected(app, users, manager_client):
    proof = proof_for(app, users["other"][2])

    response = manager_client.post("/automations/new", data=form_data(test_proof=proof))

    assert response.status_code == 422
    assert automation_count(app) == 0


def test_save_with_forged_proof_rejected(app, manager_client):
    response = manager_client.post(
        "/automations/new", data=form_data(test_proof="eyJhY2NvdW50IjoxfQ.forged.sig")
    )

    assert response.status_code == 422
    assert "not valid" in response.text
    assert automation_count(app) == 0


@pytest.mark.parametrize("app_overrides", [{"TEST_PROOF_MAX_AGE_SECONDS": -1}])
def test_save_with_expired_proof_rejected(app, users, manager_client):
    proof = proof_for(app, users["manager"][2])

    response = manager_client.post("/automations/new", data=form_data(test_proof=proof))

    assert response.status_code == 422
    assert "too old" in response.text
    assert automation_count(app) == 0


def test_save_with_valid_proof_saves(app, users, manager_client):
    proof = proof_for(app, users["manager"][2])

    response = manager_client.post("/automations/new", data=form_data(test_proof=proof))

    assert response.status_code == 302
    assert automation_count(app) == 1


def test_edit_without_url_change_needs_no_proof(app, users, manager_client):
    proof = proof_for(app, users["manager"][2])
    response = manager_client.post("/automations/new", data=form_data(test_proof=proof))
    automation_id = response.headers["Location"].rstrip("/").split("/")[-1]

    renamed = manager_client.post(
        f"/automations/{automation_id}/edit", data=form_data(name="Renamed")
    )
    moved = manager_client.post(
        f"/automations/{automation_id}/edit",
        data=form_data(url="https://hooks.example.test/moved"),
    )

    assert renamed.status_code == 302
    assert moved.status_code == 422
    with app.app_context():
        automation = db.session.get(Automation, int(automation_id))
        assert automation.name == "Renamed"
        assert automation.actions[0].url == URL


def test_rep_cannot_save(app, users):
    from tests.conftest import login

    client = app.test_client()
    login(client, users["rep"][1])
    proof = proof_for(app, users["rep"][2])

    response = client.post("/automations/new", data=form_data(test_proof=proof))

    assert response.status_code == 403
    assert automation_count(app) == 0


def save_button(html):
    start = html.index('id="save-button"')
    return html[start : html.index(">", start)]


def test_invalid_form_keeps_valid_proof(app, users, manager_client):
    """A 422 for a field other than the request settings keeps Save enabled."""
    proof = proof_for(app, users["manager"][2])

    response = manager_client.post("/automations/new", data=form_data(name="", test_proof=proof))

    assert response.status_code == 422
    assert "disabled" not in save_button(response.text)
    assert f'value="{proof}"' in response.text
    assert "answered 2xx in your last test" in response.text
    assert automation_count(app) == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": "https://hooks.example.test/other"},
        {"content_type": "application/x-www-form-urlencoded"},
        {"custom_headers": "X-Team: sales"},
        {"url": "not a url"},
        {"test_proof": "forged"},
    ],
)
def test_invalid_form_with_stale_proof_disables_save(app, users, manager_client, overrides):
    data = form_data(name="", test_proof=proof_for(app, users["manager"][2]))
    data.update(overrides)

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    assert "disabled" in save_button(response.text)
    assert "answered 2xx in your last test" not in response.text
