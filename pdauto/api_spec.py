"""The OpenAPI 3.1 document of the JSON API, served at /api/v1/openapi.json.

Written by hand to match pdauto/views/api.py; tests/test_api_fuzz.py sends
requests generated from it and checks the responses against it.
"""

from . import __version__
from .models import DEAL_STATUSES, DELIVERY_STATES, EVENT_ACTIONS, EVENT_MODELS

# Ids are 32-bit integer columns on PostgreSQL, so larger ids cannot exist.
MAX_ID = 2**31 - 1
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100
MAX_PAGE = 999_999_999
# A record's JSON is well under 4 KiB; a body this large is a mistake or abuse.
MAX_BODY_BYTES = 64 * 1024

ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
NULLABLE_ID = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_ID}
TIMESTAMP = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time", "description": "UTC"}
# A name must contain a character other than white space; leading and trailing
# white space is removed before the length is checked.
NAME_PATTERN = r"\S"


def _text(max_length, description=None, required_text=False):
    schema = {"type": "string", "maxLength": max_length}
    if required_text:
        schema["minLength"] = 1
        schema["pattern"] = NAME_PATTERN
    if description:
        schema["description"] = description
    return schema


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema):
    return {"application/json": {"schema": schema}}


def _response(description, schema=None, headers=None):
    response = {"description": description}
    if schema is not None:
        response["content"] = _json_content(schema)
    if headers:
        response["headers"] = headers
    return response


def _error(name):
    return {"$ref": f"#/components/responses/{name}"}


# Writable fields of each record: (schema, required on create).
RECORD_FIELDS = {
    "Person": {
        "first_name": (_text(100, required_text=True), True),
        "last_name": (_text(100), False),
        "email": (_text(254, "An email address, or empty."), False),
        "phone": (_text(50), False),
        "company_id": (NULLABLE_ID | {"description": "A company of the same account."}, False),
        "owner_id": (NULLABLE_ID | {"description": "A user of the same account."}, False),
    },
    "Company": {
        "name": (_text(200, required_text=True), True),
        "website": (_text(500), False),
        "owner_id": (NULLABLE_ID | {"description": "A user of the same account."}, False),
    },
    "Deal": {
        "name": (_text(200, required_text=True), True),
        "value": (
            {
                "type": "number",
                "minimum": 0,
                "maximum": 999_999_999_999,
                "description": "Amount, rounded to cents. Whole amounts are returned as integers.",
            },
            False,
        ),
        "status": ({"type": "string", "enum": list(DEAL_STATUSES)}, False),
        "stage": (_text(60), False),
        "company_id": (NULLABLE_ID | {"description": "A company of the same account."}, False),
        "person_id": (NULLABLE_ID | {"description": "A person of the same account."}, False),
        "owner_id": (
            NULLABLE_ID
            | {"description": "A user of the same account; the token's user by default."},
            False,
        ),
    },
}
CREATE_DEFAULTS = {"Deal": {"value": 0, "status": "open"}}

# URL segment -> (schema name, singular noun)
COLLECTIONS = {
    "people": ("Person", "person"),
    "companies": ("Company", "company"),
    "deals": ("Deal", "deal"),
}


def _record_schemas(name):
    fields = RECORD_FIELDS[name]
    defaults = CREATE_DEFAULTS.get(name, {})
    output = {
        "type": "object",
        "required": ["id", *fields, "created_at", "updated_at"],
        "properties": {
            "id": ID,
            **{field: schema for field, (schema, _) in fields.items()},
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        },
    }
    create = {
        "type": "object",
        "additionalProperties": False,
        "required": [field for field, (_, required) in fields.items() if required],
        "properties": {
            field: schema | ({"default": defaults[field]} if field in defaults else {})
            for field, (schema, _) in fields.items()
        },
    }
    update = {
        "type": "object",
        "additionalProperties": False,
        "description": "Only the fields given are changed.",
        "properties": {field: schema for field, (schema, _) in fields.items()},
    }
    return {name: output, f"{name}Create": create, f"{name}Update": update}


def _page_schema(item):
    return {
        "type": "object",
        "required": ["data", "page", "per_page", "total", "next"],
        "properties": {
            "data": {"type": "array", "items": _ref(item)},
            "page": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
            "total": {"type": "integer", "minimum": 0},
            "next": {
                "type": ["string", "null"],
                "description": "Path and query of the next page, or null on the last page.",
            },
        },
    }


SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "message": {"type": "string"},
                    "fields": {
                        "type": "object",
                        "description": "Messages for each invalid field of the body (422 only).",
                        "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    },
                },
            }
        },
    },
    "Action": {
        "type": "object",
        "required": ["id", "position", "kind"],
        "properties": {
            "id": ID,
            "position": {"type": "integer"},
            "kind": {"type": "string", "description": "call_api, send_email or create_task"},
            "url": {
                "type": "string",
                "description": "call_api only. A password or user name in it is shown as ***.",
            },
            "content_type": {"type": "string", "description": "call_api only."},
            "failure_email": {"type": "string", "description": "call_api only."},
            "custom_header_names": {
                "type": "array",
                "items": {"type": "string"},
                "description": "call_api only. Header values are never returned.",
            },
            "settings": {
                "type": "object",
                "description": (
                    "send_email and create_task only. send_email: to (addresses), "
                    "to_owner, subject and body (templates). create_task: assignee_id "
                    "(a user id), due_days and title (a template)."
                ),
                "properties": {
                    "to": {"type": "array", "items": {"type": "string"}},
                    "to_owner": {"type": "boolean"},
                    "subject": {"type": "string"},
                    "body": {"type": "string"},
                    "assignee_id": ID,
                    "due_days": {"type": "integer", "minimum": 0, "maximum": 365},
                    "title": {"type": "string"},
                },
            },
        },
    },
    "Automation": {
        "type": "object",
        "description": "Signing secrets are never returned.",
        "required": [
            "id",
            "name",
            "event_model",
            "event_action",
            "conditions",
            "state",
            "paused_at",
            "pause_reason",
            "deleted_at",
            "created_at",
            "updated_at",
            "actions",
        ],
        "properties": {
            "id": ID,
            "name": {"type": "string"},
            "event_model": {"type": "string", "enum": list(EVENT_MODELS)},
            "event_action": {"type": "string", "enum": list(EVENT_ACTIONS)},
            "conditions": {"type": "array"},
            "state": {"type": "string", "enum": ["active", "paused", "deleted"]},
            "paused_at": NULLABLE_TIMESTAMP,
            "pause_reason": {"type": "string"},
            "deleted_at": NULLABLE_TIMESTAMP,
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "actions": {
                "type": "array",
                "items": _ref("Action"),
                "description": "The steps it runs, by position; removed steps are left out.",
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "model", "action", "record_id", "occurred_at"],
        "properties": {
            "id": ID,
            "model": {"type": "string", "enum": list(EVENT_MODELS)},
            "action": {"type": "string", "enum": list(EVENT_ACTIONS)},
            "record_id": {"type": "integer"},
            "occurred_at": TIMESTAMP,
        },
    },
    "Delivery": {
        "type": "object",
        "required": [
            "id",
            "automation_id",
            "action_id",
            "state",
            "attempt_count",
            "next_attempt_at",
            "last_status",
            "last_error",
            "created_at",
            "completed_at",
            "event",
        ],
        "properties": {
            "id": {"type": "string", "description": "Also sent to receivers as webhook-id."},
            "automation_id": ID,
            "action_id": ID,
            "state": {"type": "string", "enum": list(DELIVERY_STATES)},
            "attempt_count": {"type": "integer", "minimum": 0},
            "next_attempt_at": NULLABLE_TIMESTAMP,
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": "string"},
            "created_at": TIMESTAMP,
            "completed_at": NULLABLE_TIMESTAMP,
            "event": _ref("Event"),
        },
    },
    "Attempt": {
        "type": "object",
        "required": [
            "number",
            "started_at",
            "duration_ms",
            "outcome",
            "succeeded",
            "request_url",
            "request_headers",
            "request_body",
            "response_status",
            "response_headers",
            "response_body",
            "error",
        ],
        "properties": {
            "number": {"type": "integer", "minimum": 1},
            "started_at": TIMESTAMP,
            "duration_ms": {"type": "number", "minimum": 0},
            "outcome": {"type": "string"},
            "succeeded": {"type": "boolean"},
            "request_url": {"type": "string", "description": "Credentials shown as ***."},
            "request_headers": {
                "type": "object",
                "description": "As sent, with credential-like values masked.",
                "additionalProperties": {"type": "string"},
            },
            "request_body": {"type": "string"},
            "response_status": {"type": ["integer", "null"]},
            "response_headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "response_body": {"type": "string", "description": "The first 64 KiB at most."},
            "error": {"type": "string"},
        },
    },
    "DeliveryWithAttempts": {
        "allOf": [
            _ref("Delivery"),
            {
                "type": "object",
                "required": ["attempts"],
                "properties": {"attempts": {"type": "array", "items": _ref("Attempt")}},
            },
        ]
    },
    "AutomationPage": _page_schema("Automation"),
    "DeliveryPage": _page_schema("Delivery"),
}
for _name in RECORD_FIELDS:
    SCHEMAS.update(_record_schemas(_name))
    SCHEMAS[f"{_name}Page"] = _page_schema(_name)

ERROR_RESPONSES = {
    "BadRequest": "The body is not valid JSON, or a query parameter is invalid.",
    "Unauthorized": "The API token is missing, unknown or revoked, or its user is deactivated.",
    "Forbidden": "The token's user has a role that does not allow this.",
    "NotFound": "Nothing with this id in the token's account.",
    "TooLarge": f"The body is larger than {MAX_BODY_BYTES // 1024} KiB.",
    "UnsupportedMediaType": "The body is not sent as application/json.",
    "Unprocessable": "The body is not a JSON object, or fields are invalid: see error.fields.",
}

PAGE_PARAMETERS = [
    {
        "name": "page",
        "in": "query",
        "description": "Page number, from 1.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
    },
    {
        "name": "per_page",
        "in": "query",
        "description": "Items per page.",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PER_PAGE,
            "default": DEFAULT_PER_PAGE,
        },
    },
]


def _id_parameter(name, description):
    return {"name": name, "in": "path", "required": True, "description": description, "schema": ID}


DELIVERY_ID_PARAMETER = {
    "name": "delivery_id",
    "in": "path",
    "required": True,
    "description": "A delivery id, as in webhook-id.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
}


def _json_body(schema_name):
    return {"required": True, "content": _json_content(_ref(schema_name))}


def _record_paths(collection, name, noun):
    record_id = _id_parameter("record_id", f"The {noun}'s id.")
    written = {
        "400": _error("BadRequest"),
        "401": _error("Unauthorized"),
        "413": _error("TooLarge"),
        "415": _error("UnsupportedMediaType"),
        "422": _error("Unprocessable"),
    }
    return {
        f"/api/v1/{collection}": {
            "get": {
                "operationId": f"list_{collection}",
                "summary": f"List {collection}, oldest first",
                "tags": [collection],
                "parameters": PAGE_PARAMETERS,
                "responses": {
                    "200": _response("One page", _ref(f"{name}Page")),
                    "400": _error("BadRequest"),
                    "401": _error("Unauthorized"),
                },
            },
            "post": {
                "operationId": f"create_{noun}",
                "summary": f"Create a {noun}; fires a created event",
                "tags": [collection],
                "requestBody": _json_body(f"{name}Create"),
                "responses": {
                    "201": _response(
                        "Created",
                        _ref(name),
                        {
                            "Location": {
                                "description": "The new record's URL.",
                                "schema": {"type": "string"},
                            }
                        },
                    ),
                    **written,
                },
            },
        },
        f"/api/v1/{collection}/{{record_id}}": {
            "parameters": [record_id],
            "get": {
                "operationId": f"get_{noun}",
                "summary": f"Read a {noun}",
                "tags": [collection],
                "responses": {
                    "200": _response("The record", _ref(name)),
                    "401": _error("Unauthorized"),
                    "404": _error("NotFound"),
                },
            },
            "patch": {
                "operationId": f"update_{noun}",
                "summary": f"Change fields of a {noun}; fires an updated event if anything changed",
                "tags": [collection],
                "requestBody": _json_body(f"{name}Update"),
                "responses": {
                    "200": _response("The record after the change", _ref(name)),
                    "404": _error("NotFound"),
                    **written,
                },
            },
            "delete": {
                "operationId": f"delete_{noun}",
                "summary": f"Delete a {noun}; fires a deleted event",
                "tags": [collection],
                "responses": {
                    "204": _response("Deleted"),
                    "401": _error("Unauthorized"),
                    "404": _error("NotFound"),
                },
            },
        },
    }


def _automation_paths():
    automation_id = _id_parameter("automation_id", "The automation's id.")
    state = {
        "name": "state",
        "in": "query",
        "description": "Only deliveries in this state.",
        "schema": {"type": "string", "enum": list(DELIVERY_STATES)},
    }
    return {
        "/api/v1/automations": {
            "get": {
                "operationId": "list_automations",
                "summary": "List the automations that are not deleted, oldest first",
                "tags": ["automations"],
                "parameters": PAGE_PARAMETERS,
                "responses": {
                    "200": _response("One page", _ref("AutomationPage")),
                    "400": _error("BadRequest"),
                    "401": _error("Unauthorized"),
                },
            }
        },
        "/api/v1/automations/{automation_id}": {
            "get": {
                "operationId": "get_automation",
                "summary": "Read an automation, deleted ones included",
                "tags": ["automations"],
                "parameters": [automation_id],
                "responses": {
                    "200": _response("The automation", _ref("Automation")),
                    "401": _error("Unauthorized"),
                    "404": _error("NotFound"),
                },
            }
        },
        "/api/v1/automations/{automation_id}/deliveries": {
            "get": {
                "operationId": "list_deliveries",
                "summary": "List an automation's deliveries, newest first",
                "tags": ["deliveries"],
                "parameters": [automation_id, *PAGE_PARAMETERS, state],
                "responses": {
                    "200": _response("One page", _ref("DeliveryPage")),
                    "400": _error("BadRequest"),
                    "401": _error("Unauthorized"),
                    "404": _error("NotFound"),
                },
            }
        },
        "/api/v1/deliveries/{delivery_id}": {
            "get": {
                "operationId": "get_delivery",
                "summary": "Read a delivery with all its attempts",
                "tags": ["deliveries"],
                "parameters": [DELIVERY_ID_PARAMETER],
                "responses": {
                    "200": _response("The delivery", _ref("DeliveryWithAttempts")),
                    "401": _error("Unauthorized"),
                    "404": _error("NotFound"),
                },
            }
        },
        "/api/v1/deliveries/{delivery_id}/redeliver": {
            "post": {
                "operationId": "redeliver",
                "summary": "Queue one more attempt of a delivery, whatever its state",
                "description": "Needs the admin or manager role.",
                "tags": ["deliveries"],
                "parameters": [DELIVERY_ID_PARAMETER],
                "responses": {
                    "202": _response("Queued", _ref("Delivery")),
                    "401": _error("Unauthorized"),
                    "403": _error("Forbidden"),
                    "404": _error("NotFound"),
                },
            }
        },
    }


def build_spec():
    """Return the OpenAPI document as a dict ready for JSON."""
    paths = {}
    for collection, (name, noun) in COLLECTIONS.items():
        paths.update(_record_paths(collection, name, noun))
    paths.update(_automation_paths())
    paths["/api/v1/openapi.json"] = {
        "get": {
            "operationId": "get_openapi",
            "summary": "This document",
            "tags": ["meta"],
            "security": [],
            "responses": {"200": _response("The OpenAPI document", {"type": "object"})},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pdauto API",
            "version": __version__,
            "description": (
                "People, companies and deals, and the automations and webhook deliveries "
                "they trigger. Send an API token, created on the API tokens page, as "
                "'Authorization: Bearer <token>'; the token acts as its user, with that "
                "user's role. Changes made here fire the same events as the web pages. "
                'Errors are JSON: {"error": {"status", "message", "fields"}}.'
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "pdt_..."}
            },
            "schemas": SCHEMAS,
            "responses": {
                name: _response(description, _ref("Error"))
                for name, description in ERROR_RESPONSES.items()
            },
        },
    }
