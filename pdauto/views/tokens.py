"""API tokens: each user creates, lists and revokes their own."""

import logging

from flask import (
    Blueprint,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from ..extensions import db
from ..forms import strip
from ..models import ApiToken, utcnow

log = logging.getLogger(__name__)

bp = Blueprint("tokens", __name__)


class NewTokenForm(FlaskForm):
    name = StringField(
        "Name",
        validators=[DataRequired(message="Name the token."), Length(max=100)],
        filters=[strip],
        description="Where the token is used, e.g. \u201cinvoicing sync\u201d.",
    )


@bp.route("/api-tokens")
@login_required
def list_tokens():
    tokens = db.session.scalars(
        db.select(ApiToken)
        .where(ApiToken.user_id == current_user.id)
        .order_by(ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc(), ApiToken.id.desc())
    ).all()
    return render_template("tokens/list.html", tokens=tokens)


@bp.route("/api-tokens/new", methods=["GET", "POST"])
@login_required
def new_token():
    form = NewTokenForm()
    if form.validate_on_submit():
        token, text = ApiToken.issue(current_user, form.name.data)
        db.session.commit()
        log.info("user %s created API token %s", current_user.id, token.id)
        # The token is in this page only: never in a flash message, the session or a cache.
        response = make_response(render_template("tokens/created.html", token=token, text=text))
        response.headers["Cache-Control"] = "no-store"
        return response
    status = 422 if request.method == "POST" else 200
    return render_template("tokens/new.html", form=form), status


@bp.route("/api-tokens/<int:token_id>/revoke", methods=["POST"])
@login_required
def revoke_token(token_id):
    token = db.session.scalar(
        db.select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == current_user.id)
    )
    if token is None:
        abort(404)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.commit()
        log.info("user %s revoked API token %s", current_user.id, token.id)
    flash(f"Revoked the token {token.name}. Requests that use it now get 401.", "success")
    return redirect(url_for("tokens.list_tokens"))
