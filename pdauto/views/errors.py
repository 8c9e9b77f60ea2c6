"""Error pages, and htmx fragments that say what went wrong."""

import logging

from flask import render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..extensions import db
from .common import is_htmx

log = logging.getLogger(__name__)

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
        return render_error(
            400,
            "Form expired",
            "The form is too old or was opened in another session. "
            "Reload the page and submit it again.",
        )

    @app.errorhandler(HTTPException)
    def http_error(error):
        return render_error(error.code or 500)

    @app.errorhandler(500)
    def server_error(error):
        db.session.rollback()
        log.exception("unhandled error", exc_info=getattr(error, "original_exception", error))
        return render_error(500)
