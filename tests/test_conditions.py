"""Check trigger conditions: each operator on each model, through real CRM changes."""

import pytest

from pdauto import automations, crm
from pdauto.conditions import InvalidConditions, conditions_match, validate_conditions
from pdauto.extensions import db
from pdauto.models import Automation, Event
from tests.conftest import run_jobs
from tests.factories import make_automation

# Per model: the fields a record is created with, the update applied to it,
# a text field, a field that the update empties, and a numeric field if any.
MODELS = {
    "person": {
        "create": {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"},
        "update": {"last_name": "King", "email": ""},
        "text": "last_name",
        "emptied": "email",
    },
    "company": {
        "create": {"name": "Initech", "website": "https://initech.example.com"},
        "update": {"name": "Initrode", "website": ""},
        "text": "name",
        "emptied": "website",
    },
    "deal": {
        "create": {"name": "Big deal", "value": 12000, "status": "open", "stage": "proposal"},
        "update": {"status": "won", "value": 15000, "stage": ""},
        "text": "status",
        "emptied": "stage",
    },
}


def events_for(model, account_id):
    """Create, update and delete one record; return its three events by action."""
    spec = MODELS[model]
    record = crm.create_record(model, account_id, dict(spec["create"]))
    crm.update_record(record, dict(spec["update"]))
    crm.delete_record(record)
    found = db.session.scalars(db.select(Event).order_by(Event.id)).all()
    return {event.action: event for event in found[-3:]}


def cases(model):
    """Yield (action, condition, expected) rows for one model."""
    spec = MODELS[model]
    text, emptied = spec["text"], spec["emptied"]
    created_text = spec["create"][text]
    updated_text = spec["update"][text]
    for action, value in (("created", created_text), ("updated", updated_text)):
        yield action, {"field": text, "op": "equals", "value": value.upper()}, True
        yield action, {"field": text, "op": "not_equals", "value": value}, False
        yield action, {"field": text, "op": "not_equals", "value": "something else"}, True
        yield action, {"field": text, "op": "contains", "value": value[1:3]}, True
        yield action, {"field": text, "op": "contains", "value": "zzz"}, False
    # The deleted record is matched as it was before the delete.
    yield "deleted", {"field": text, "op": "equals", "value": updated_text}, True
    yield "deleted", {"field": emptied, "op": "is_empty", "value": ""}, True
    yield "created", {"field": emptied, "op": "is_empty", "value": ""}, False
    yield "updated", {"field": emptied, "op": "is_empty", "value": ""}, True
    yield "updated", {"field": emptied, "op": "equals", "value": ""}, True
    # Change operators hold only for updates.
    yield "updated", {"field": text, "op": "changed", "value": ""}, True
    yield "updated", {"field": text, "op": "changed_from", "value": created_text}, True
    yield "updated", {"field": text, "op": "changed_from", "value": updated_text}, False
    yield "updated", {"field": text, "op": "changed_to", "value": updated_text}, True
    yield "updated", {"field": emptied, "op": "changed_to", "value": ""}, True
    yield "updated", {"field": "owner_id", "op": "changed", "value": ""}, False
    yield "created", {"field": text, "op": "changed", "value": ""}, False
    yield "deleted", {"field": text, "op": "changed", "value": ""}, False
    if model == "deal":
        yield "updated", {"field": "value", "op": "greater_than", "value": "10000"}, True
        yield "updated", {"field": "value", "op": "greater_than", "value": "15000"}, False
        yield "created", {"field": "value", "op": "less_than", "value": "12000.5"}, True
        yield "created", {"field": "value", "op": "equals", "value": "12000.00"}, True
        yield "updated", {"field": "value", "op": "changed_from", "value": "12000"}, True
        yield "updated", {"field": "name", "op": "greater_than", "value": "5"}, False


@pytest.fixture
def model_events(app, users):
    account_id = users["manager"][2]
    with app.app_context():
        return {model: events_for(model, account_id) for model in MODELS}


@pytest.mark.parametrize("model", list(MODELS))
def test_condition_table(app, model_events, model, subtests):
    with app.app_context():
        events = {action: db.session.merge(event) for action, event in model_events[model].items()}
        for action, condition, expected in cases(model):
            with subtests.test(action=action, **condition):
                assert conditions_match([condition], events[action]) is expected


def test_no_conditions_match_everything(app, model_events):
    with app.app_context():
        event = db.session.merge(model_events["deal"]["created"])

        assert conditions_match([], event) is True


def test_all_conditions_must_hold(app, model_events):
    won = {"field": "status", "op": "changed_to", "value": "won"}
    big = {"field": "value", "op": "greater_than", "value": "20000"}
    with app.app_context():
        event = db.session.merge(model_events["deal"]["updated"])

        assert conditions_match([won], event) is True
        assert conditions_match([won, big], event) is False


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ("status", "must be a list"),
        ([{"field": "colour", "op": "equals", "value": "red"}], "choose one of the deal fields"),
        ([{"field": "status", "op": "like", "value": "w%"}], "choose an operator"),
        ([{"field": "value", "op": "greater_than", "value": "lots"}], "enter a number"),
        ([{"field": "name", "op": "equals", "value": "x" * 501}], "longer than 500"),
        ([{"field": "name", "op": "is_empty"}] * 21, "at most 20"),
        (["status = won"], "not a field, operator and value"),
    ],
)
def test_invalid_conditions_named(conditions, message):
    with pytest.raises(InvalidConditions, match=message):
        validate_conditions("deal", conditions)


@pytest.mark.parametrize("action", ["created", "deleted"])
@pytest.mark.parametrize("operator", ["changed", "changed_from", "changed_to"])
def test_change_condition_rejected_without_update(action, operator):
    condition = {"field": "status", "op": operator, "value": "won"}

    with pytest.raises(InvalidConditions, match=f"applies only to updates.*deal is {action}"):
        validate_conditions("deal", [condition], action)


def test_builder_rejects_change_condition_on_created(app, users, manager_client):
    response = manager_client.post(
        "/automations/new",
        data={
            "name": "Deal won at once",
            "event_model": "deal",
            "event_action": "created",
            "url": "https://hooks.example.test/in",
            "failure_email": "ops@example.com",
            "content_type": "application/json",
            "condition_field": "status",
            "condition_op": "changed_to",
            "condition_value": "won",
        },
    )

    assert response.status_code == 422
    assert "applies only to updates" in response.text
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Automation.id))) == 0


def test_validate_cleans_values():
    cleaned = validate_conditions(
        "deal",
        [
            {"field": " status ", "op": "changed_to", "value": " won "},
            {"field": "stage", "op": "is_empty", "value": "ignored"},
        ],
    )

    assert cleaned == [
        {"field": "status", "op": "changed_to", "value": "won"},
        {"field": "stage", "op": "is_empty", "value": ""},
    ]


def test_only_matching_changes_delivered(app, users, receiver):
    """A deal was won: only the update that sets status to won is delivered."""
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), event_action="updated")
        automation.conditions = [{"field": "status", "op": "changed_to", "value": "won"}]
        db.session.commit()
        deal = crm.create_record("deal", account_id, {"name": "Big deal", "value": 5})
        crm.update_record(deal, {"stage": "negotiation"})
        crm.update_record(deal, {"status": "won"})
        crm.update_record(deal, {"value": 6})

    run_jobs(app)

    [request] = receiver.wait_for_requests(1)
    assert request.json()["changes"] == {"status": ["open", "won"]}
    assert len(receiver.requests) == 1


def test_resume_replays_only_matching_events(app, users, receiver):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), event_action="updated")
        automation.conditions = [{"field": "status", "op": "changed_to", "value": "won"}]
        db.session.commit()
        automations.pause(automation)
        deal = crm.create_record("deal", account_id, {"name": "Big deal", "value": 5})
        crm.update_record(deal, {"stage": "negotiation"})
        crm.update_record(deal, {"status": "won"})
        missed = automations.missed_event_count(automation)
        automations.resume(automation, replay=True)

    run_jobs(app)

    assert missed == 1
    [request] = receiver.wait_for_requests(1)
    assert request.json()["changes"] == {"status": ["open", "won"]}
