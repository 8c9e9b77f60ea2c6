"""The home page, the health check and the metrics."""

import hmac
import ipaddress
import logging

import redis
from flask import Blueprint, Response, abort, current_app, jsonify, request
from flask_login import current_user, login_required
from sqlalchemy import text

from .. import queue
from ..extensions import db
from ..health import health_by_automation
from ..models import Automation, Delivery
from .common import render

log = logging.getLogger(__name__)

bp = Blueprint("main", __name__)


@bp.route("/")
@login_required
def home():
    account_id = current_user.account_id
    automations = db.session.scalars(
        db.select(Automation)
        .where(Automation.account_id == account_id, Automation.deleted_at.is_(None))
        .order_by(Automation.name)
    ).all()
    recent = db.session.scalars(
        db.select(Delivery)
        .where(Delivery.account_id == account_id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(10)
    ).all()
    health = health_by_automation(automations)
    attention = [automation for automation in automations if health[automation.id].needs_attention]
    return render(
        "main/home.html",
        automations=automations,
        recent=recent,
        health=health,
        attention=attention,
    )


@bp.route("/healthz")
def healthz():
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # any driver error means the check failed
        log.warning("health check: database failed: %s", error)
        checks["database"] = "failed"
    try:
        queue.get_redis().ping()
        checks["redis"] = "ok"
    except redis.RedisError as error:
        log.warning("health check: redis failed: %s", error)
        checks["redis"] = "failed"

    healthy = all(value == "ok" for value in checks.values())
    return jsonify(status="ok" if healthy else "failed", checks=checks), (200 if healthy else 503)


@bp.route("/metrics")
def metrics():
    """Serve Prometheus metrics to the metrics token bearer or an allowed network."""
    if not _metrics_allowed():
        log.warning("metrics: request from %s rejected", request.remote_addr)
        abort(403)
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from ..metrics import Collector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(current_app._get_current_object()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _metrics_allowed():
    token = current_app.config.get("PDAUTO_METRICS_TOKEN")
    supplied = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
        return True
    try:
        client = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    networks = current_app.config["PDAUTO_METRICS_NETWORKS"]
    return any(client in ipaddress.ip_network(network) for network in networks)
