"""The JSON API under /api/v1: records, automations and deliveries.

Clients authenticate with a per-user API token in `Authorization: Bearer <token>`
and act as that user, with that user's role. Session cookies are never read, so
the blueprint needs no CSRF protection. The OpenAPI document at
/api/v1/openapi.json (pdauto.api_spec) describes every route here.
"""

import json
import logging
import re
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from flask import Blueprint, Response, g, jsonify, request, url_for
from sqlalchemy.orm import selectinload
from werkzeug.datastructures import MultiDict

from .. import api_spec, crm
from .. import automations as automations_domain
from ..api_spec import DEFAULT_PER_PAGE, MAX_BODY_BYTES, MAX_ID, MAX_PAGE, MAX_PER_PAGE
from ..extensions import csrf, db
from ..forms import RECORD_FORMS
from ..models import (
    DELIVERY_STATES,
    RECORD_CLASSES,
    ApiToken,
    Attempt,
    Automation,
    Company,
    Delivery,
    Person,
    User,
    utcnow,
)
from ..webhooks import mask_url
from .errors import json_error

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)

MANAGERS = ("admin", "manager")
COLLECTIONS = {"people": "person", "companies": "company", "deals": "deal"}

WHOLE_NUMBER = re.compile(r"[0-9]{1,20}")
DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
TOKEN_TEXT = re.compile(r"pdt_[A-Za-z0-9_-]{43}")
# last_used_at is written at most this often per token, so most requests write nothing.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# The fields of each record that the UI's forms check; the API runs the same forms.
FORM_FIELDS = {
    "person": ("first_name", "last_name", "email", "phone"),
    "company": ("name", "website"),
    "deal": ("name", "value", "status", "stage"),
}
# Values of the form fields that a create request may leave out.
CREATE_DEFAULTS = {
    "person": {"last_name": "", "email": "", "phone": ""},
    "company": {"website": ""},
    "deal": {"value": "0", "status": "open", "stage": ""},
}
NUMBER_FIELDS = {"value"}
# Fields holding the id of another row of the same account, or null.
REFERENCES = {
    "person": {"company_id": Company, "owner_id": User},
    "company": {"owner_id": User},
    "deal": {"company_id": Company, "person_id": Person, "owner_id": User},
}
REFERENCE_NAMES = {Company: "company", Person: "person", User: "user"}
CENTS = Decimal("0.01")


class ApiError(Exception):
    """An error that the API returns as its JSON error body."""

    def __init__(self, status, message=None, fields=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields
        self.headers = headers


@bp.errorhandler(ApiError)
def handle_api_error(error):
    log.info(
        "API %s %s rejected with %s: %s",
        request.method,
        request.path,
        error.status,
        error.message or "(default message)",
    )
    return json_error(error.status, error.message, error.fields, error.headers)


@bp.before_request
def authenticate():
    request.max_content_length = MAX_BODY_BYTES
    if request.endpoint == "api.openapi":
        return
    user = _user_for_token(request.headers.get("Authorization", ""))
    if user is None:
        raise ApiError(401, headers={"WWW-Authenticate": 'Bearer realm="pdauto"'})
    g.api_user = user


def _user_for_token(header):
    """Return the active user of a valid, unrevoked token in the header, or None."""
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not TOKEN_TEXT.fullmatch(credentials):
        return None
    token = db.session.scalar(
        db.select(ApiToken).where(ApiToken.token_hash == ApiToken.hash_token(credentials))
    )
    if token is None or token.revoked:
        log.info("API request with an unknown or revoked token from %s", request.remote_addr)
        return None
    user = token.user
    if not user.active:
        log.info("API token %s rejected: user %s is deactivated", token.id, user.id)
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = now
        db.session.commit()
    return user


def _require_role(*roles):
    if g.api_user.role not in roles:
        raise ApiError(
            403, f"The role {g.api_user.role} cannot do this; it needs {' or '.join(roles)}."
        )


# --- Request parsing ---


def _json_object():
    """Return the request body as a dict; raise 415, 400 or 422 when it is not one."""
    if not request.is_json:
        raise ApiError(415)
    raw = request.get_data(cache=True)
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"The body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "The body must be a JSON object.")
    return payload


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _page_arguments():
    page = _int_argument("page", 1, MAX_PAGE)
    per_page = _int_argument("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
    return page, per_page


def _int_argument(name, default, maximum):
    raw = request.args.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"{name} must be a whole number from 1 to {maximum}, got {raw!r}.")
    return int(raw)


def _check_id(record_id):
    if not 1 <= record_id <= MAX_ID:
        raise ApiError(404)
    return record_id


# --- Serialization ---


def _timestamp(value):
    """Return a naive UTC datetime in ISO 8601 with a Z, or None."""
    return None if value is None else value.isoformat() + "Z"


def _number(value):
    """Return a Decimal amount as a JSON number: whole amounts as integers."""
    if value is None:
        return None
    value = Decimal(value)
    return int(value) if value == value.to_integral_value() else float(value)


def _record_json(record):
    data = {"id": record.id}
    for name in (*FORM_FIELDS[record.event_model], *REFERENCES[record.event_model]):
        value = getattr(record, name)
        data[name] = _number(value) if name in NUMBER_FIELDS else value
    data["created_at"] = _timestamp(record.created_at)
    data["updated_at"] = _timestamp(record.updated_at)
    return data


def _action_json(action):
    data = {"id": action.id, "position": action.position, "kind": action.kind}
    if action.kind == "call_api":
        # Never the signing secrets, credentials in the URL, or custom header
        # values, which often hold API keys of the receiver.
        data["url"] = mask_url(action.url)
        data["content_type"] = action.content_type
        data["failure_email"] = action.failure_email
        data["custom_header_names"] = sorted(action.custom_headers or {})
    else:
        data["settings"] = dict(action.settings or {})
    return data


def _automation_json(automation):
    return {
        "id": automation.id,
        "name": automation.name,
        "event_model": automation.event_model,
        "event_action": automation.event_action,
        "conditions": automation.conditions or [],
        "state": automation.state,
        "paused_at": _timestamp(automation.paused_at),
        "pause_reason": automation.pause_reason,
        "deleted_at": _timestamp(automation.deleted_at),
        "created_at": _timestamp(automation.created_at),
        "updated_at": _timestamp(automation.updated_at),
        # Steps removed in the builder are kept for their deliveries, but no longer run.
        "actions": [
            _action_json(action) for action in automation.actions if action.removed_at is None
        ],
    }


def _delivery_json(delivery):
    event = delivery.event
    return {
        "id": delivery.id,
        "automation_id": delivery.automation_id,
        "action_id": delivery.action_id,
        "state": delivery.state,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": _timestamp(delivery.next_attempt_at),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": _timestamp(delivery.created_at),
        "completed_at": _timestamp(delivery.completed_at),
        "event": {
            "id": event.id,
            "model": event.model,
            "action": event.action,
            "record_id": event.record_id,
            "occurred_at": _timestamp(event.occurred_at),
        },
    }


def _attempt_json(attempt):
    # The URL and the credential-like headers were masked when the attempt was recorded.
    return {
        "number": attempt.number,
        "started_at": _timestamp(attempt.started_at),
        "duration_ms": attempt.duration_ms,
        "outcome": attempt.outcome,
        "succeeded": attempt.succeeded,
        "request_url": attempt.request_url,
        "request_headers": attempt.request_headers or {},
        "request_body": attempt.request_body,
        "response_status": attempt.response_status,
        "response_headers": attempt.response_headers or {},
        "response_body": attempt.response_body,
        "error": attempt.error,
    }


def _page(query, order_by, serialize, endpoint, options=(), **url_values):
    """Return one page of `query` as {"data", "page", "per_page", "total", "next"}.

    `options` are loader options for the page's rows, such as selectinload.
    """
    page, per_page = _page_arguments()
    total = db.session.scalar(db.select(db.func.count()).select_from(query.subquery()))
    offset = (page - 1) * per_page
    rows = []
    if offset < total:
        page_query = query.options(*options).order_by(*order_by).limit(per_page).offset(offset)
        rows = db.session.scalars(page_query).all()
    next_url = None
    if offset + per_page < total:
        next_url = url_for(endpoint, page=page + 1, per_page=per_page, **url_values)
    return jsonify(
        data=[serialize(row) for row in rows],
        page=page,
        per_page=per_page,
        total=total,
        next=next_url,
    )


# --- Record validation ---


def _record_fields(model, payload, creating):
    """Check a create or update payload; return the fields to save.

    Raises ApiError(422) naming each invalid field. Text and amounts go through
    the UI's form, so both accept the same values.
    """
    errors = {
        name: ["Unknown or read-only field."]
        for name in payload
        if name not in FORM_FIELDS[model] and name not in REFERENCES[model]
    }
    fields = {}
    for checked_fields, problems in (
        _check_form_fields(model, payload, creating),
        _check_references(model, payload),
    ):
        fields.update(checked_fields)
        errors.update(problems)
    if errors:
        raise ApiError(422, "Some fields are invalid: " + ", ".join(sorted(errors)) + ".", errors)
    return fields


def _check_form_fields(model, payload, creating):
    """Return (valid fields, {field: messages}) for the fields that the form checks.

    An update checks only the fields in the payload; a create also fills in defaults.
    """
    errors = {}
    formdata = dict(CREATE_DEFAULTS[model]) if creating else {}
    names = [name for name in FORM_FIELDS[model] if creating or name in payload]
    for name in names:
        if name not in payload:
            continue
        problem = _type_problem(name, payload[name])
        if problem:
            errors[name] = [problem]
        else:
            formdata[name] = str(payload[name])

    form = RECORD_FORMS[model](formdata=MultiDict(formdata), meta={"csrf": False})
    form.validate()
    for name in names:
        if name not in errors and form[name].errors:
            errors[name] = list(form[name].errors)

    fields = {name: form[name].data for name in names if name not in errors}
    if "value" in fields:
        # Half away from zero, as PostgreSQL rounds numeric values.
        fields["value"] = fields["value"].quantize(CENTS, rounding=ROUND_HALF_UP)
    return fields, errors


def _check_references(model, payload):
    fields = {}
    errors = {}
    for name, target in REFERENCES[model].items():
        if name not in payload:
            continue
        problem = _reference_problem(target, payload[name])
        if problem:
            errors[name] = [problem]
        else:
            fields[name] = payload[name]
    return fields, errors


def _type_problem(name, value):
    if name in NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "Must be a number."
        return None
    if not isinstance(value, str):
        return "Must be a string."
    if "\x00" in value:
        return "Must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode text."
    return None


def _reference_problem(target, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return "Must be an integer id or null."
    exists = 1 <= value <= MAX_ID and db.session.scalar(
        db.select(target.id).where(target.id == value, target.account_id == g.api_user.account_id)
    )
    if not exists:
        return f"No {REFERENCE_NAMES[target]} with id {value} in this account."
    return None


def _record_or_404(model, record_id):
    record = crm.get_record(model, g.api_user.account_id, _check_id(record_id))
    if record is None:
        raise ApiError(404, f"No {model} with id {record_id} in this account.")
    return record


# --- Routes ---


@bp.route("/openapi.json")
def openapi():
    return jsonify(api_spec.build_spec())


RECORDS = "/<any(people, companies, deals):collection>"


@bp.route(RECORDS)
def list_records(collection):
    record_class = RECORD_CLASSES[COLLECTIONS[collection]]
    query = db.select(record_class).where(record_class.account_id == g.api_user.account_id)
    return _page(query, (record_class.id,), _record_json, "api.list_records", collection=collection)


@bp.route(RECORDS, methods=["POST"])
def create_record(collection):
    model = COLLECTIONS[collection]
    fields = _record_fields(model, _json_object(), creating=True)
    fields.setdefault("owner_id", g.api_user.id)
    record = crm.create_record(model, g.api_user.account_id, fields)
    log.info("API: user %s created %s %s", g.api_user.id, model, record.id)
    response = jsonify(_record_json(record))
    response.status_code = 201
    response.headers["Location"] = url_for(
        "api.get_record", collection=collection, record_id=record.id
    )
    return response


@bp.route(RECORDS + "/<int:record_id>")
def get_record(collection, record_id):
    return jsonify(_record_json(_record_or_404(COLLECTIONS[collection], record_id)))


@bp.route(RECORDS + "/<int:record_id>", methods=["PATCH"])
def update_record(collection, record_id):
    model = COLLECTIONS[collection]
    record = _record_or_404(model, record_id)
    fields = _record_fields(model, _json_object(), creating=False)
    if fields:
        crm.update_record(record, fields)
        log.info("API: user %s updated %s %s", g.api_user.id, model, record.id)
    return jsonify(_record_json(record))


@bp.route(RECORDS + "/<int:record_id>", methods=["DELETE"])
def delete_record(collection, record_id):
    model = COLLECTIONS[collection]
    record = _record_or_404(model, record_id)
    crm.delete_record(record)
    log.info("API: user %s deleted %s %s", g.api_user.id, model, record_id)
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def _automation_or_404(automation_id):
    automation = db.session.scalar(
        db.select(Automation).where(
            Automation.id == _check_id(automation_id),
            Automation.account_id == g.api_user.account_id,
        )
    )
    if automation is None:
        raise ApiError(404, f"No automation with id {automation_id} in this account.")
    return automation


@bp.route("/automations")
def list_automations():
    query = db.select(Automation).where(
        Automation.account_id == g.api_user.account_id, Automation.deleted_at.is_(None)
    )
    return _page(
        query,
        (Automation.id,),
        _automation_json,
        "api.list_automations",
        options=(selectinload(Automation.actions),),
    )


@bp.route("/automations/<int:automation_id>")
def get_automation(automation_id):
    return jsonify(_automation_json(_automation_or_404(automation_id)))


@bp.route("/automations/<int:automation_id>/deliveries")
def list_deliveries(automation_id):
    automation = _automation_or_404(automation_id)
    query = db.select(Delivery).where(Delivery.automation_id == automation.id)
    url_values = {}
    state = request.args.get("state")
    if state is not None:
        if state not in DELIVERY_STATES:
            raise ApiError(
                400, f"state must be one of {', '.join(DELIVERY_STATES)}, got {state!r}."
            )
        query = query.where(Delivery.state == state)
        url_values["state"] = state
    return _page(
        query,
        (Delivery.created_at.desc(), Delivery.id.desc()),
        _delivery_json,
        "api.list_deliveries",
        options=(selectinload(Delivery.event),),
        automation_id=automation.id,
        **url_values,
    )


def _delivery_or_404(delivery_id):
    delivery = None
    if DELIVERY_ID.fullmatch(delivery_id):
        delivery = automations_domain.get_delivery(g.api_user.account_id, delivery_id)
    if delivery is None:
        raise ApiError(404, f"No delivery with id {delivery_id!r} in this account.")
    return delivery


@bp.route("/deliveries/<delivery_id>")
def get_delivery(delivery_id):
    delivery = _delivery_or_404(delivery_id)
    attempts = db.session.scalars(
        db.select(Attempt).where(Attempt.delivery_id == delivery.id).order_by(Attempt.number)
    ).all()
    data = _delivery_json(delivery)
    data["attempts"] = [_attempt_json(attempt) for attempt in attempts]
    return jsonify(data)


@bp.route("/deliveries/<delivery_id>/redeliver", methods=["POST"])
def redeliver(delivery_id):
    _require_role(*MANAGERS)
    delivery = _delivery_or_404(delivery_id)
    automations_domain.redeliver(delivery)
    log.info("API: user %s queued delivery %s again", g.api_user.id, delivery.id)
    response = jsonify(_delivery_json(delivery))
    response.status_code = 202
    return response
