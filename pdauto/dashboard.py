"""The RQ dashboard, mounted at /rq for the admins of the operator account only."""

import logging
from urllib.parse import urlsplit

import redis
import rq_dashboard
from flask import abort, current_app, g, request
from flask_login import current_user
from rq.exceptions import NoSuchJobError

from .extensions import csrf, login_manager

log = logging.getLogger(__name__)

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
    app.register_error_handler(NoSuchJobError, job_not_found)
    app.register_error_handler(redis.exceptions.ResponseError, redis_command_failed)


def job_not_found(error):
    from .views.errors import render_error

    return render_error(
        404,
        "Job not found",
        "The job finished and its record expired, or it was deleted. Go back to the queue list.",
    )


def redis_command_failed(error):
    """Render a 409 page for a dashboard action that Redis rejected (an empty queue, say)."""
    from .views.errors import render_error

    log.warning("RQ dashboard: Redis rejected %s %s: %s", request.method, request.path, error)
    if request.blueprint != rq_dashboard.blueprint.name:
        return render_error(500)
    return render_error(
        409,
        "Queue action failed",
        f"Redis rejected the action ({error}). The queue may be empty; reload the queue list.",
    )


def guard_dashboard():
    if request.blueprint != rq_dashboard.blueprint.name:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_admin:
        abort(403)
    if not current_user.can_see_queues:
        from .views.errors import render_error

        return render_error(
            403,
            "Queues are for the operator",
            "The queues hold the jobs of every account on this installation, so only the"
            " admins of the account that operates it can open them.",
        )
    if request.method not in ("GET", "HEAD"):
        if not _same_origin():
            abort(403)
    elif request.path.startswith(f"{URL_PREFIX}/requeue/"):
        # The dashboard handles GET here by requeueing every failed job: a
        # side effect that a link could trigger.
        abort(405)
    return None


def operator_account_id():
    """Return the id of the account whose admins may open the dashboard.

    PDAUTO_OPERATOR_ACCOUNT_ID names it; unset, it is the account created first.
    The id is cached for the current request.
    """
    configured = current_app.config.get("PDAUTO_OPERATOR_ACCOUNT_ID")
    if configured is not None:
        return configured
    if "pdauto_operator_account_id" not in g:
        from .extensions import db
        from .models import Account

        g.pdauto_operator_account_id = db.session.scalar(db.select(db.func.min(Account.id)))
    return g.pdauto_operator_account_id


def _same_origin():
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.netloc == request.host
