"""Send requests generated from the OpenAPI document to the API and check the responses.

Schemathesis calls the Flask app in-process (WSGI, no network) with an admin's
API token. Each response must not be a server error, must have a status code
and content type that the document lists, and must match the document's schema.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pdauto.api_spec import build_spec
from pdauto.extensions import db
from pdauto.models import ApiToken, Attempt, Company, Deal, Delivery, Event, Person, User
from tests.factories import make_automation

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Generated ids are mapped into 0..SEEDED_IDS, so that requests also reach rows that exist.
SEEDED_IDS = 5
DELIVERY_IDS = [f"msg_fuzz{number}" for number in range(SEEDED_IDS)]


@pytest.fixture
def seeded(app, users):
    """Make records, automations and deliveries in the admin's account; return the admin's token.

    The ids of each kind run from 1 to SEEDED_IDS.
    """
    account_id = users["admin"][2]
    with app.app_context():
        _, token = ApiToken.issue(db.session.get(User, users["admin"][0]), "fuzz")
        for number in range(SEEDED_IDS):
            company = Company(account_id=account_id, name=f"Company {number}")
            db.session.add(company)
            db.session.flush()
            person = Person(account_id=account_id, first_name=f"P{number}", company_id=company.id)
            db.session.add(person)
            db.session.flush()
            db.session.add(
                Deal(
                    account_id=account_id,
                    name=f"Deal {number}",
                    value=number * 1000,
                    company_id=company.id,
                    person_id=person.id,
                )
            )
            automation = make_automation(account_id, f"http://127.0.0.1:9/hook{number}")
            event = Event(account_id=account_id, model="deal", action="created", record_id=1)
            db.session.add(event)
            db.session.flush()
            delivery = Delivery(
                id=DELIVERY_IDS[number],
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
                Attempt(delivery_id=delivery.id, number=1, outcome="http_error", error="HTTP 500")
            )
        db.session.commit()
    return token


# The schema is loaded from the dict that the app serves, so that pytest can make one
# test per operation at collection time. NOTE: schemathesis 4.32.5's lazy loader,
# schemathesis.pytest.from_fixture, fails on pytest 9.2, which has no Function._nodeid.
schema = schemathesis.openapi.from_dict(build_spec())


@schema.hook
def map_path_parameters(context, path_parameters):
    if not isinstance(path_parameters, dict):
        return path_parameters
    for name in ("record_id", "automation_id"):
        if isinstance(path_parameters.get(name), int):
            path_parameters[name] = path_parameters[name] % (SEEDED_IDS + 1)
    if isinstance(path_parameters.get("delivery_id"), str):
        index = len(path_parameters["delivery_id"]) % (SEEDED_IDS + 1)
        if index < SEEDED_IDS:
            path_parameters["delivery_id"] = DELIVERY_IDS[index]
    return path_parameters


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_matches_openapi(app, case, seeded):
    token = seeded

    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
