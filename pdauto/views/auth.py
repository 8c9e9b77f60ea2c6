"""Login and logout, with failed attempts limited per account and per client address."""

import logging
import math
import time
from urllib.parse import urlsplit

import redis
from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from .. import queue
from ..extensions import db, login_manager
from ..forms import LoginForm
from ..models import User
from ..throttle import RollingLimiter

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

# (attempts, seconds) windows: failed logins allowed before further logins are rejected.
ACCOUNT_LIMITS = ((5, 300), (20, 3600))
ADDRESS_LIMITS = ((20, 300), (100, 3600))


@login_manager.user_loader
def load_user(user_id):
    user = db.session.get(User, int(user_id))
    if user is None or not user.active:
        return None
    return user


def _safe_next(target):
    """Return `target` if it is a path on this site, else the home page."""
    if target and target.startswith("/") and not urlsplit(target).netloc:
        if not target.startswith("//"):
            return target
    return url_for("main.home")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.home"))

    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        email = form.email.data.lower()
        reservations = _reserve_attempt(email, request.remote_addr or "unknown")
        if reservations is None:
            status = 429
        else:
            user = db.session.scalar(db.select(User).where(User.email == email))
            if user is not None and user.active and user.check_password(form.password.data):
                _release_attempt(reservations)
                # A new session on every login, so a session id planted before it is useless.
                session.clear()
                login_user(user)
                log.info("user %s of account %s logged in", user.id, user.account_id)
                return redirect(_safe_next(request.args.get("next")))
            log.info("login failed for %s from %s", email, request.remote_addr)
            flash("Invalid email or password.", "error")
            status = 401
    return render_template("auth/login.html", form=form), status


def _limiters():
    client = queue.get_redis()
    return (
        RollingLimiter(client, queue.redis_key("login", "account"), ACCOUNT_LIMITS),
        RollingLimiter(client, queue.redis_key("login", "address"), ADDRESS_LIMITS),
    )


def _reserve_attempt(email, address):
    """Take a slot for one attempt per email and per address; None when either limit is hit.

    Each attempt counts until it succeeds, so the limits apply to failed attempts.
    When Redis is down the login goes ahead without a limit, and a warning is logged.
    """
    try:
        account_limiter, address_limiter = _limiters()
        reserved = []
        for limiter, subject in ((account_limiter, email), (address_limiter, address)):
            reservation = limiter.reserve(subject)
            if not reservation.allowed:
                for earlier_limiter, earlier_subject, token in reserved:
                    earlier_limiter.release(earlier_subject, token)
                minutes = max(1, math.ceil((reservation.retry_at - time.time()) / 60))
                log.warning(
                    "login rejected for %s from %s: too many failed attempts", email, address
                )
                flash(
                    f"Too many failed logins. Wait {minutes} minutes, then try again,"
                    " or ask an admin to reset your password.",
                    "error",
                )
                return None
            reserved.append((limiter, subject, reservation.token))
        return reserved
    except redis.RedisError as error:
        log.warning("login limit not checked, Redis failed: %s", error)
        return []


def _release_attempt(reserved):
    try:
        for limiter, subject, token in reserved:
            limiter.release(subject, token)
    except redis.RedisError as error:
        log.warning("login attempt not released, Redis failed: %s", error)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
