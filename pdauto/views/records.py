"""People, companies and deals: list, add, edit, delete."""

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .. import crm, events
from ..extensions import db
from ..forms import RECORD_FORMS
from ..models import RECORD_CLASSES, Event

bp = Blueprint("records", __name__)

# URL segment -> event model
COLLECTIONS = {"people": "person", "companies": "company", "deals": "deal"}
TITLES = {"person": "People", "company": "Companies", "deal": "Deals"}


def _model_for(collection):
    model = COLLECTIONS.get(collection)
    if model is None:
        abort(404)
    return model


def _form_fields(form):
    return {name: field.data for name, field in form._fields.items() if name != "csrf_token"}


def _get_or_404(model, record_id):
    record = crm.get_record(model, current_user.account_id, record_id)
    if record is None:
        abort(404)
    return record


@bp.route("/<collection>")
@login_required
def list_records(collection):
    model = _model_for(collection)
    record_class = RECORD_CLASSES[model]
    records = db.session.scalars(
        db.select(record_class)
        .where(record_class.account_id == current_user.account_id)
        .order_by(record_class.id.desc())
        .limit(500)
    ).all()
    return render_template(
        "records/list.html",
        collection=collection,
        model=model,
        title=TITLES[model],
        records=records,
    )


@bp.route("/<collection>/new", methods=["GET", "POST"])
@login_required
def new_record(collection):
    model = _model_for(collection)
    form = RECORD_FORMS[model]()
    if form.validate_on_submit():
        fields = _form_fields(form)
        fields["owner_id"] = current_user.id
        record = crm.create_record(model, current_user.account_id, fields)
        flash(f"Added {record.display_name}.", "success")
        return redirect(url_for("records.list_records", collection=collection))
    return render_template(
        "records/form.html", form=form, collection=collection, model=model, record=None
    )


@bp.route("/<collection>/<int:record_id>/edit", methods=["GET", "POST"])
@login_required
def edit_record(collection, record_id):
    model = _model_for(collection)
    record = _get_or_404(model, record_id)
    form = RECORD_FORMS[model](obj=record)
    if form.validate_on_submit():
        event = crm.update_record(record, _form_fields(form))
        flash(
            f"Saved {record.display_name}." if event else "Nothing changed.",
            "success" if event else "info",
        )
        return redirect(url_for("records.list_records", collection=collection))
    return render_template(
        "records/form.html",
        form=form,
        collection=collection,
        model=model,
        record=record,
    )


@bp.route("/<collection>/<int:record_id>/delete", methods=["GET", "POST"])
@login_required
def delete_record(collection, record_id):
    """Show a confirmation page on GET, and delete the record on POST."""
    model = _model_for(collection)
    record = _get_or_404(model, record_id)
    if request.method == "GET":
        return render_template(
            "records/delete.html",
            collection=collection,
            model=model,
            record=record,
            automation_count=len(_automations_run_by_delete(model, record)),
        )
    name = record.display_name
    crm.delete_record(record)
    flash(f"Deleted {name}.", "success")
    return redirect(url_for("records.list_records", collection=collection))


def _automations_run_by_delete(model, record):
    """Return the active automations that deleting `record` now would run.

    The trigger and the conditions are checked against an unsaved copy of the
    event that crm.delete_record writes, so the count matches the dispatcher's.
    """
    before = events.snapshot(record)
    event = Event(
        account_id=record.account_id,
        model=model,
        action="deleted",
        record_id=record.id,
        changes=events.diff(before, {}),
        record=before,
    )
    triggered = events.triggered_automations(current_user.account_id, model, "deleted")
    return events.matching(triggered, event)
