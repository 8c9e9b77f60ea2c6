"""Error pages, htmx error fragments, and JSON errors for the API."""

import logging

from flask import jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..extensions import db
from .common import is_htmx

log = logging.getLogger(__name__)

API_PREFIX = "/api/"

MESSAGES = {
    400: (
        "Bad request",
        "The request could not be understood. Reload the page and try again.",
    ),
    403: (
        "Not allowed",
        "Your role does not allow this. Ask an admin of your account.",
    ),
    404: (
        "Not found",
        "That page or record does not exist, or it belongs to another account.",
    ),
    405: ("Not allowed", "That action cannot be done this way."),
    413: ("Too large", "The request is larger than the server accepts."),
    429: ("Too many requests", "Wait a minute, then try again."),
    500: (
        "Something went wrong",
        "The error was logged. Try again; if it repeats, tell an admin.",
    ),
}

# Default messages of JSON API errors, for errors raised without a message of their own.
API_MESSAGES = {
    400: "The request is invalid.",
    401: "Missing, invalid or revoked API token. Send 'Authorization: Bearer <token>'.",
    403: "The token's user does not have a role that allows this.",
    404: "Not found: the URL names nothing, or something of another account.",
    405: "Method not allowed for this URL.",
    413: "The request body is larger than the server accepts.",
    415: "Send the body as JSON with 'Content-Type: application/json'.",
    422: "The request body has invalid values.",
    429: "Too many requests. Wait, then try again.",
    500: "Internal server error. The error was logged; try again later.",
}


# Headers of an HTTP error that a JSON error response keeps.
KEPT_HEADERS = {"allow", "retry-after", "www-authenticate"}


def is_api_request():
    return request.path.startswith(API_PREFIX)


def json_error(status, message=None, fields=None, headers=None):
    """Return the API's error response: {"error": {"status", "message"[, "fields"]}}."""
    body = {"status": status, "message": message or API_MESSAGES.get(status, "Error.")}
    if fields:
        body["fields"] = fields
    response = jsonify(error=body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _json_http_error(error):
    status = error.code or 500
    # Werkzeug's stock descriptions talk of browsers and spelling, so keep only a
    # message that the raising code gave.
    message = error.description
    if message == type(error).description:
        message = None
    headers = {name: value for name, value in error.get_headers() if name.lower() in KEPT_HEADERS}
    return json_error(status, message, headers=headers)


def render_error(status, title=None, message=None):
    default_title, default_message = MESSAGES.get(status, ("Error", "The request failed."))
    context = {
        "status": status,
        "title": title or default_title,
        "message": message or default_message,
    }
    template = "errors/_error.html" if is_htmx() else "errors/error.html"
    response = render_template(template, **context), status
    return response


def register(app):
    @app.errorhandler(CSRFError)
    def csrf_error(error):
        if is_api_request():
            return json_error(400, "Missing or invalid CSRF token.")
        return render_error(
            400,
            "Form expired",
            "The form is too old or was opened in another session. "
            "Reload the page and submit it again.",
        )

    @app.errorhandler(HTTPException)
    def http_error(error):
        if is_api_request():
            return _json_http_error(error)
        return render_error(error.code or 500)

    @app.errorhandler(500)
    def server_error(error):
        db.session.rollback()
        log.exception("unhandled error", exc_info=getattr(error, "original_exception", error))
        if is_api_request():
            return json_error(500)
        return render_error(500)
