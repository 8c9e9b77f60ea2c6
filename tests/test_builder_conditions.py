"""Check conditions in the builder: saved with the automation, shown, and validated."""

from werkzeug.datastructures import MultiDict

from pdauto import proofs
from pdauto.extensions import db
from pdauto.models import Automation

URL = "https://hooks.example.test/in"


def builder_data(*rows, **overrides):
    data = MultiDict(
        {
            "name": "Deal won",
            "event_model": "deal",
            "event_action": "updated",
            "url": URL,
            "failure_email": "ops@example.com",
            "content_type": "application/json",
        }
    )
    for field, operator, value in rows:
        data.add("condition_field", field)
        data.add("condition_op", operator)
        data.add("condition_value", value)
    for key, value in overrides.items():
        data[key] = value
    return data


def proof_for(app, account_id):
    with app.test_request_context():
        return proofs.issue_proof(
            account_id, proofs.request_fingerprint(URL, "application/json", {})
        )


def test_conditions_saved_and_shown(app, users, manager_client):
    data = builder_data(
        ("status", "changed_to", " won "),
        ("value", "greater_than", "10000"),
        test_proof=proof_for(app, users["manager"][2]),
    )

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 302, response.text
    with app.app_context():
        automation = db.session.scalar(db.select(Automation))
        assert automation.conditions == [
            {"field": "status", "op": "changed_to", "value": "won"},
            {"field": "value", "op": "greater_than", "value": "10000"},
        ]
        automation_id = automation.id
    page = manager_client.get(f"/automations/{automation_id}").text
    assert "status changed to won" in page
    assert "value is greater than 10000" in page
    edit = manager_client.get(f"/automations/{automation_id}/edit").text
    assert 'value="10000"' in edit
    assert edit.count('class="condition-row row"') == 2 + 3  # two rows and three templates


def test_invalid_condition_keeps_rows(app, users, manager_client):
    data = builder_data(
        ("value", "greater_than", "lots"),
        test_proof=proof_for(app, users["manager"][2]),
    )

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    assert "Condition 1: enter a number to compare with." in response.text
    assert 'value="lots"' in response.text
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Automation.id))) == 0


def test_field_of_other_model_rejected(app, users, manager_client):
    data = builder_data(
        ("first_name", "equals", "Ada"), test_proof=proof_for(app, users["manager"][2])
    )

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    assert "choose one of the deal fields" in response.text


def test_edit_removes_conditions(app, users, manager_client):
    first = builder_data(
        ("status", "equals", "won"), test_proof=proof_for(app, users["manager"][2])
    )
    location = manager_client.post("/automations/new", data=first).headers["Location"]
    automation_id = int(location.rstrip("/").split("/")[-1])

    response = manager_client.post(f"/automations/{automation_id}/edit", data=builder_data())

    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(Automation, automation_id).conditions == []
