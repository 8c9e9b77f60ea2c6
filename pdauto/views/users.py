"""User management for admins, and the password page for everyone."""

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, logout_user

from ..extensions import db
from ..forms import ChangePasswordForm, EditUserForm, NewUserForm
from ..models import User
from .common import roles_required

log = logging.getLogger(__name__)

bp = Blueprint("users", __name__)


def _user_of_account_or_404(user_id):
    user = db.session.get(User, user_id)
    if user is None or user.account_id != current_user.account_id:
        abort(404)
    return user


def _active_admins():
    return db.session.scalar(
        db.select(db.func.count(User.id)).where(
            User.account_id == current_user.account_id, User.role == "admin", User.active
        )
    )


@bp.route("/users")
@roles_required("admin")
def list_users():
    users = db.session.scalars(
        db.select(User).where(User.account_id == current_user.account_id).order_by(User.email)
    ).all()
    return render_template("users/list.html", users=users)


@bp.route("/users/new", methods=["GET", "POST"])
@roles_required("admin")
def new_user():
    form = NewUserForm()
    if form.validate_on_submit():
        email = form.email.data.lower()
        if db.session.scalar(db.select(User.id).where(User.email == email)) is not None:
            form.email.errors.append("A user with this email exists already.")
        else:
            user = User(account_id=current_user.account_id, email=email, role=form.role.data)
            user.set_password(form.password.data)
            db.session.add(user)
            db.session.commit()
            log.info("user %s created user %s as %s", current_user.id, user.id, user.role)
            flash(f"Created {user.email} as {user.role}.", "success")
            return redirect(url_for("users.list_users"))
    status = 422 if request.method == "POST" else 200
    return render_template("users/new.html", form=form), status


@bp.route("/users/<int:user_id>/role", methods=["POST"])
@roles_required("admin")
def set_role(user_id):
    user = _user_of_account_or_404(user_id)
    form = EditUserForm()
    if not form.validate_on_submit():
        flash("Choose one of the roles in the list.", "error")
    elif user.role == "admin" and form.role.data != "admin" and _active_admins() <= 1:
        flash(
            "The account needs at least one active admin. Make another user admin first.", "error"
        )
    else:
        user.role = form.role.data
        db.session.commit()
        log.info("user %s set the role of user %s to %s", current_user.id, user.id, user.role)
        flash(f"{user.email} is now {user.role}.", "success")
    return redirect(url_for("users.list_users"))


@bp.route("/users/<int:user_id>/deactivate", methods=["POST"])
@roles_required("admin")
def deactivate_user(user_id):
    user = _user_of_account_or_404(user_id)
    if user.id == current_user.id:
        flash("You cannot deactivate yourself. Ask another admin.", "error")
    elif user.role == "admin" and user.active and _active_admins() <= 1:
        flash("The account needs at least one active admin.", "error")
    else:
        user.active = False
        db.session.commit()
        log.info("user %s deactivated user %s", current_user.id, user.id)
        flash(f"Deactivated {user.email}. Their sessions end with their next request.", "success")
    return redirect(url_for("users.list_users"))


@bp.route("/users/<int:user_id>/activate", methods=["POST"])
@roles_required("admin")
def activate_user(user_id):
    user = _user_of_account_or_404(user_id)
    user.active = True
    db.session.commit()
    log.info("user %s activated user %s", current_user.id, user.id)
    flash(f"Activated {user.email}.", "success")
    return redirect(url_for("users.list_users"))


@bp.route("/password", methods=["GET", "POST"])
@login_required
def change_password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        if not current_user.check_password(form.current_password.data):
            form.current_password.errors.append("This is not your current password.")
        else:
            current_user.set_password(form.new_password.data)
            db.session.commit()
            log.info("user %s changed their password", current_user.id)
            logout_user()
            flash("Password changed. Log in with the new password.", "success")
            return redirect(url_for("auth.login"))
    status = 422 if request.method == "POST" else 200
    return render_template("users/password.html", form=form), status
