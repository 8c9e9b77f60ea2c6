"""Helpers that every blueprint uses."""

from functools import wraps

from flask import abort, make_response, render_template, request
from flask_login import current_user, login_required


def is_htmx():
    """Return whether to respond with a fragment: an htmx request, not a history restore."""
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def render(page, fragment=None, status=200, **context):
    """Render the fragment for htmx requests and the full page otherwise."""
    template = fragment if fragment and is_htmx() else page
    response = make_response(render_template(template, **context), status)
    response.vary.add("HX-Request")
    return response


def roles_required(*roles):
    """Require a logged-in user with one of `roles`; others get 403."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator
