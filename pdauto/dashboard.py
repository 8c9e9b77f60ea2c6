"""The RQ dashboard, mounted at /rq for admins only."""

from urllib.parse import urlsplit

import rq_dashboard
from flask import abort, request
from flask_login import current_user

from .extensions import csrf, login_manager

URL_PREFIX = "/rq"


def mount(app):
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    rq_dashboard.web.setup_rq_connection(app)
    # The dashboard's own buttons post without a CSRF token; guard_dashboard
    # checks the Origin of every state-changing request instead.
    csrf.exempt(rq_dashboard.blueprint)

    # An app-level hook runs before the blueprint's own hooks, so no
    # dashboard code runs for a user who may not see it.
    app.before_request(guard_dashboard)


def guard_dashboard():
    if request.blueprint != rq_dashboard.blueprint.name:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_admin:
        abort(403)
    if request.method not in ("GET", "HEAD"):
        if not _same_origin():
            abort(403)
    elif request.path.startswith(f"{URL_PREFIX}/requeue/"):
        # The dashboard answers GET here by requeueing every failed job: a
        # side effect that a link could trigger.
        abort(405)
    return None


def _same_origin():
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.netloc == request.host
