"""Check the builder's steps after Call API, and duplicating an automation."""

import re

from werkzeug.datastructures import MultiDict

from pdauto import proofs
from pdauto.extensions import db
from pdauto.models import Action, ApiToken, Automation, Delivery, Event, User
from tests.conftest import csrf_token_from, login

URL = "https://hooks.example.test/in"
EMAIL_STEP = {
    "to": "Ada Lovelace <ada@example.com>, bob@example.com",
    "to_owner": "yes",
    "subject": "Deal {{ deal.name }} won",
    "body": "Value: {{ deal.value }}",
}
SAVED_EMAIL = {
    "to": ["Ada Lovelace <ada@example.com>", "bob@example.com"],
    "to_owner": True,
    "subject": "Deal {{ deal.name }} won",
    "body": "Value: {{ deal.value }}",
}


def builder_data(*steps, **overrides):
    """Return the builder's fields, with each step given as (key, kind, action id, settings)."""
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
    for key, kind, action_id, settings in steps:
        data.add("step_key", key)
        data[f"step-{key}-kind"] = kind
        data[f"step-{key}-id"] = "" if action_id is None else str(action_id)
        for name, value in settings.items():
            data[f"step-{key}-{name}"] = value
    for key, value in overrides.items():
        data[key] = value
    return data


def task_step(assignee_id, title="Call about {{ deal.name }}", due_days="3"):
    return {"assignee_id": str(assignee_id), "due_days": due_days, "title": title}


def proof_for(app, account_id):
    with app.test_request_context():
        return proofs.issue_proof(
            account_id, proofs.request_fingerprint(URL, "application/json", {})
        )


def create(app, users, client, *steps):
    """Save a new automation with `steps` through the builder and return its id."""
    data = builder_data(*steps, test_proof=proof_for(app, users["manager"][2]))
    response = client.post("/automations/new", data=data)
    assert response.status_code == 302, response.text
    return int(response.headers["Location"].rstrip("/").split("/")[-1])


def steps_of(app, automation_id):
    """Return (id, kind, position, settings, removed) of each action, by position."""
    with app.app_context():
        rows = db.session.scalars(
            db.select(Action)
            .where(Action.automation_id == automation_id)
            .order_by(Action.position, Action.id)
        )
        return [
            (row.id, row.kind, row.position, row.settings, row.removed_at is not None)
            for row in rows
        ]


def steps_summary(html):
    match = re.search(r'<ol class="steps-summary">(.*?)</ol>', html, re.S)
    assert match, "no list of steps on the automation page"
    return [" ".join(item.split()) for item in re.findall(r"<li>(.*?)</li>", match.group(1), re.S)]


def count_rows(app, model):
    with app.app_context():
        return db.session.scalar(db.select(db.func.count(model.id)))


def test_steps_saved_in_order(app, users, manager_client):
    manager_id, manager_email, _ = users["manager"]

    automation_id = create(
        app,
        users,
        manager_client,
        ("k1", "create_task", None, task_step(manager_id)),
        ("k2", "send_email", None, EMAIL_STEP),
    )

    steps = steps_of(app, automation_id)
    assert [(kind, position) for _, kind, position, _, _ in steps] == [
        ("call_api", 0),
        ("create_task", 1),
        ("send_email", 2),
    ]
    assert steps[1][3] == {
        "assignee_id": manager_id,
        "due_days": 3,
        "title": "Call about {{ deal.name }}",
    }
    assert steps[2][3] == SAVED_EMAIL
    page = manager_client.get(f"/automations/{automation_id}").text
    assert steps_summary(page) == [
        f"Call API: POST to <code>{URL}</code>; failures are emailed to "
        "<strong>ops@example.com</strong>.",
        f"Create task for {manager_email}, due in 3 days: Call about {{{{ deal.name }}}}",
        "Send email to Ada Lovelace &lt;ada@example.com&gt;, bob@example.com, "
        "the record&#39;s owner: Deal {{ deal.name }} won",
    ]


def test_owner_box_stays_with_step(app, users, manager_client):
    without_owner = {name: value for name, value in EMAIL_STEP.items() if name != "to_owner"}

    automation_id = create(
        app,
        users,
        manager_client,
        ("a", "send_email", None, without_owner),
        ("b", "send_email", None, EMAIL_STEP),
    )

    steps = steps_of(app, automation_id)
    assert steps[1][3]["to_owner"] is False
    assert steps[2][3]["to_owner"] is True


def test_builder_shows_template_fields(manager_client):
    page = manager_client.get("/automations/new").text

    assert 'id="step-fields-hint"' in page
    assert "{{ deal.name }}" in page
    assert "The fields of a person: id, first_name," in page
    assert page.count('<template id="step-template-') == 2


def test_invalid_step_keeps_typed_values(app, users, manager_client):
    manager_id = users["manager"][0]
    data = builder_data(
        ("k1", "send_email", None, {**EMAIL_STEP, "to": "not an address, bob@example.com"}),
        ("k2", "create_task", None, task_step(manager_id, due_days="400")),
        test_proof=proof_for(app, users["manager"][2]),
    )

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    page = response.text
    errors = re.findall(r'<p class="field-error" role="alert">([^<]*)</p>', page)
    assert len(errors) == 3
    assert errors[1].startswith("Step 1: &#39;not")
    assert "is not a valid email address" in errors[1]
    assert errors[2] == "Step 2: The task can be due in 0 to 365 days."
    assert "Some steps are invalid" in page
    assert 'value="not an address, bob@example.com"' in page
    assert 'value="Deal {{ deal.name }} won"' in page
    assert "Value: {{ deal.value }}</textarea>" in page
    assert 'value="400"' in page
    assert f'<option value="{manager_id}" selected>' in page
    assert 'name="step-k1-to_owner" value="yes" checked' in page
    assert count_rows(app, Automation) == 0
    assert count_rows(app, Action) == 0


def test_invalid_edit_saves_nothing(app, users, manager_client):
    manager_id = users["manager"][0]
    automation_id = create(
        app, users, manager_client, ("k1", "create_task", None, task_step(manager_id))
    )
    before = steps_of(app, automation_id)
    task_id = before[1][0]
    data = builder_data(
        ("k1", "create_task", task_id, task_step(manager_id, title="Changed")),
        ("k2", "send_email", None, {**EMAIL_STEP, "subject": "{% for x in y %}{% endfor %}"}),
        name="Changed name",
    )

    response = manager_client.post(f"/automations/{automation_id}/edit", data=data)

    assert response.status_code == 422
    assert "Step 2: The subject may only use fields" in response.text
    assert 'value="Changed"' in response.text
    assert steps_of(app, automation_id) == before
    with app.app_context():
        assert db.session.get(Automation, automation_id).name == "Deal won"


def test_foreign_assignee_rejected(app, users, manager_client):
    other_user_id = users["other"][0]
    data = builder_data(
        ("k1", "create_task", None, task_step(other_user_id)),
        test_proof=proof_for(app, users["manager"][2]),
    )

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    assert "Step 1: Choose an active user of this account for the task." in response.text
    assert count_rows(app, Automation) == 0


def test_too_many_steps_rejected(app, users, manager_client):
    steps = [(f"k{n}", "send_email", None, EMAIL_STEP) for n in range(11)]
    data = builder_data(*steps, test_proof=proof_for(app, users["manager"][2]))

    response = manager_client.post("/automations/new", data=data)

    assert response.status_code == 422
    assert "Use at most 10 further steps; remove step 11." in response.text
    assert count_rows(app, Automation) == 0


def test_edit_keeps_ids_and_reorders(app, users, manager_client):
    manager_id = users["manager"][0]
    automation_id = create(
        app,
        users,
        manager_client,
        ("k1", "send_email", None, EMAIL_STEP),
        ("k2", "create_task", None, task_step(manager_id)),
    )
    _, (email_id, *_), (task_id, *_) = steps_of(app, automation_id)
    edit_page = manager_client.get(f"/automations/{automation_id}/edit").text
    assert f'name="step-s{email_id}-id" value="{email_id}"' in edit_page
    assert 'value="Ada Lovelace &lt;ada@example.com&gt;, bob@example.com"' in edit_page

    data = builder_data(
        ("x", "create_task", task_id, task_step(manager_id, title="Renamed")),
        ("new", "send_email", None, {**EMAIL_STEP, "subject": "Second email"}),
        ("y", "send_email", email_id, EMAIL_STEP),
    )
    response = manager_client.post(f"/automations/{automation_id}/edit", data=data)

    assert response.status_code == 302, response.text
    steps = steps_of(app, automation_id)
    assert [(kind, position) for _, kind, position, _, _ in steps] == [
        ("call_api", 0),
        ("create_task", 1),
        ("send_email", 2),
        ("send_email", 3),
    ]
    assert steps[1][0] == task_id
    assert steps[1][3]["title"] == "Renamed"
    assert steps[2][0] not in (email_id, task_id)
    assert steps[2][3]["subject"] == "Second email"
    assert steps[3][0] == email_id


def test_foreign_step_id_rejected(app, users, manager_client):
    first = create(app, users, manager_client, ("k1", "send_email", None, EMAIL_STEP))
    second = create(app, users, manager_client)
    foreign_id = steps_of(app, first)[1][0]
    data = builder_data(("k1", "send_email", foreign_id, {**EMAIL_STEP, "subject": "Taken"}))

    response = manager_client.post(f"/automations/{second}/edit", data=data)

    assert response.status_code == 422
    assert "Step 1 is no longer part of this automation" in response.text
    assert steps_of(app, first)[1][3] == SAVED_EMAIL


def test_removed_step_keeps_history(app, users, manager_client):
    manager_id = users["manager"][0]
    automation_id = create(
        app,
        users,
        manager_client,
        ("k1", "send_email", None, EMAIL_STEP),
        ("k2", "create_task", None, task_step(manager_id)),
    )
    _, (email_id, *_), (task_id, *_) = steps_of(app, automation_id)
    with app.app_context():
        account_id = users["manager"][2]
        event = Event(account_id=account_id, model="deal", action="updated", record_id=1)
        db.session.add(event)
        db.session.flush()
        delivery = Delivery(
            account_id=account_id,
            event_id=event.id,
            action_id=email_id,
            automation_id=automation_id,
            state="succeeded",
        )
        db.session.add(delivery)
        db.session.commit()
        delivery_id = delivery.id

    data = builder_data(("k2", "create_task", task_id, task_step(manager_id)))
    response = manager_client.post(f"/automations/{automation_id}/edit", data=data)

    assert response.status_code == 302, response.text
    with app.app_context():
        removed = db.session.get(Action, email_id)
        assert removed is not None
        assert removed.removed_at is not None
        assert db.session.get(Delivery, delivery_id).action_id == email_id
        assert db.session.get(Action, task_id).removed_at is None
    page = manager_client.get(f"/automations/{automation_id}").text
    summary = steps_summary(page)
    assert len(summary) == 2
    assert summary[1].startswith("Create task for ")
    edit_page = manager_client.get(f"/automations/{automation_id}/edit").text
    assert f'name="step-s{email_id}-id"' not in edit_page
    with app.app_context():
        _, token = ApiToken.issue(db.session.get(User, users["rep"][0]), "steps")
        db.session.commit()
    listed = manager_client.get(
        f"/api/v1/automations/{automation_id}", headers={"Authorization": f"Bearer {token}"}
    ).get_json()["actions"]
    assert [action["id"] for action in listed] == [steps_of(app, automation_id)[0][0], task_id]


def test_api_shows_step_settings(app, users, manager_client, client):
    automation_id = create(app, users, manager_client, ("k1", "send_email", None, EMAIL_STEP))
    with app.app_context():
        _, token = ApiToken.issue(db.session.get(User, users["rep"][0]), "steps")
        db.session.commit()

    response = client.get(
        f"/api/v1/automations/{automation_id}", headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 200
    call_api, email = response.get_json()["actions"]
    assert call_api["kind"] == "call_api"
    assert "settings" not in call_api
    assert email["kind"] == "send_email"
    assert email["position"] == 1
    assert email["settings"] == SAVED_EMAIL


def test_duplicate_copies_everything_paused(app, users, manager_client):
    manager_id = users["manager"][0]
    data = builder_data(
        ("k1", "send_email", None, EMAIL_STEP),
        ("k2", "create_task", None, task_step(manager_id)),
        test_proof=proof_for(app, users["manager"][2]),
    )
    data.add("condition_field", "status")
    data.add("condition_op", "changed_to")
    data.add("condition_value", "won")
    location = manager_client.post("/automations/new", data=data).headers["Location"]
    original_id = int(location.rstrip("/").split("/")[-1])
    with app.app_context():
        db.session.get(Action, steps_of(app, original_id)[0][0]).custom_headers = {"X-Team": "a"}
        db.session.commit()
    app.config["WTF_CSRF_ENABLED"] = True
    token = csrf_token_from(manager_client.get(f"/automations/{original_id}").text)

    without_token = manager_client.post(f"/automations/{original_id}/duplicate")
    response = manager_client.post(
        f"/automations/{original_id}/duplicate", data={"csrf_token": token}
    )

    assert without_token.status_code == 400
    assert response.status_code == 302
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Automation.id))) == 2
        original = db.session.get(Automation, original_id)
        copy = db.session.scalar(db.select(Automation).where(Automation.id != original_id))
        assert response.headers["Location"].endswith(f"/automations/{copy.id}/edit")
        assert copy.name == "Copy of Deal won"
        assert copy.account_id == original.account_id
        assert (copy.event_model, copy.event_action) == ("deal", "updated")
        assert copy.conditions == [{"field": "status", "op": "changed_to", "value": "won"}]
        assert copy.active is False
        assert copy.paused_at is not None
        assert copy.state == "paused"
        assert original.active is True
        pairs = list(zip(original.actions, copy.actions, strict=True))
        for old, new in pairs:
            assert new.id != old.id
            assert (new.kind, new.position, new.settings) == (old.kind, old.position, old.settings)
        old_api, new_api = pairs[0]
        assert new_api.url == URL
        assert new_api.failure_email == "ops@example.com"
        assert new_api.custom_headers == {"X-Team": "a"}
        assert new_api.signing_secret.startswith("whsec_")
        assert new_api.signing_secret != old_api.signing_secret
    edit_page = manager_client.get(response.headers["Location"]).text
    assert "Copied Deal won to Copy of Deal won. The copy is paused" in edit_page
    assert 'value="Copy of Deal won"' in edit_page


def test_duplicate_leaves_out_removed_steps(app, users, manager_client):
    manager_id = users["manager"][0]
    automation_id = create(
        app,
        users,
        manager_client,
        ("k1", "send_email", None, EMAIL_STEP),
        ("k2", "create_task", None, task_step(manager_id)),
    )
    task_id = steps_of(app, automation_id)[2][0]
    data = builder_data(("k2", "create_task", task_id, task_step(manager_id)))
    assert manager_client.post(f"/automations/{automation_id}/edit", data=data).status_code == 302

    response = manager_client.post(f"/automations/{automation_id}/duplicate")

    copy_id = int(response.headers["Location"].rstrip("/").split("/")[-2])
    assert [
        (kind, position, removed) for _, kind, position, _, removed in steps_of(app, copy_id)
    ] == [
        ("call_api", 0, False),
        ("create_task", 1, False),
    ]


def test_duplicate_other_account_not_found(app, users, manager_client):
    automation_id = create(app, users, manager_client, ("k1", "send_email", None, EMAIL_STEP))
    other = app.test_client()
    login(other, users["other"][1])

    response = other.post(f"/automations/{automation_id}/duplicate")

    assert response.status_code == 404
    assert count_rows(app, Automation) == 1


def test_duplicate_by_rep_forbidden(app, users, manager_client):
    automation_id = create(app, users, manager_client)
    rep = app.test_client()
    login(rep, users["rep"][1])

    response = rep.post(f"/automations/{automation_id}/duplicate")
    page = rep.get(f"/automations/{automation_id}").text

    assert response.status_code == 403
    assert count_rows(app, Automation) == 1
    assert "Duplicate" not in page


def test_non_ascii_failure_address_gets_message(app, users, manager_client):
    """A mailbox name with other than ASCII letters cannot be mailed, so it is not saved."""
    response = manager_client.post(
        "/automations/new",
        data={
            "name": "Deal hook",
            "event_model": "deal",
            "event_action": "created",
            "url": "http://127.0.0.1:9/hook",
            "failure_email": "jürgen@exämple.com",
            "content_type": "application/json",
        },
    )
    assert response.status_code == 422
    assert "other than ASCII" in response.text
