"""The automation builder, Test Now, and each automation's delivery log."""

import uuid
from datetime import UTC, datetime

from flask import Blueprint, abort, current_app, flash, redirect, request, url_for
from flask_login import current_user, login_required

from .. import actions, deliveries, delivery_log, proofs
from .. import automations as domain
from ..conditions import OPERATORS, InvalidConditions, fields_for, validate_conditions
from ..extensions import db
from ..forms import (
    AutomationForm,
    TestNowForm,
    blank_step,
    step_to_submit,
    steps_from_actions,
    steps_from_formdata,
)
from ..health import health_by_automation
from ..models import EVENT_MODELS, Attempt, Automation, Delivery, User, new_signing_secret
from ..webhooks import AddressPolicy, Sender, WebhookRequest, mask_url
from .common import render, roles_required

bp = Blueprint("automations", __name__, url_prefix="/automations")

MANAGERS = ("admin", "manager")
PAGE_SIZE = 25


def _get_automation_or_404(automation_id, include_deleted=False):
    automation = domain_get(automation_id)
    if automation is None or (automation.deleted_at and not include_deleted):
        abort(404)
    return automation


def domain_get(automation_id):
    return deliveries.automation_for_account(current_user.account_id, automation_id)


@bp.route("/")
@login_required
def list_automations():
    automations = db.session.scalars(
        db.select(Automation)
        .where(
            Automation.account_id == current_user.account_id,
            Automation.deleted_at.is_(None),
        )
        .order_by(Automation.name)
    ).all()
    return render(
        "automations/list.html", automations=automations, health=health_by_automation(automations)
    )


@bp.context_processor
def _step_helpers():
    return {
        "current_actions": domain.current_actions,
        "describe_action": actions.describe,
        "step_titles": actions.ACTION_TITLES,
    }


def _render_builder(form, automation=None, status=200, conditions=None, steps=()):
    action = domain.call_api_action(automation) if automation else None
    tested = request.method == "POST" and _proof_still_valid(form, action)
    if conditions is None:
        # Invalid rows come back as the user typed them, next to the message.
        conditions = _typed_conditions()
    return render(
        "automations/builder.html",
        form=form,
        automation=automation,
        action=action,
        status=status,
        conditions=conditions,
        condition_fields={model: fields_for(model) for model in EVENT_MODELS},
        operators=OPERATORS,
        conditions_error=getattr(form, "conditions_error", ""),
        steps=steps,
        steps_invalid=any(step["error"] for step in steps),
        new_steps={kind: blank_step(kind) for kind in domain.STEP_KINDS},
        step_titles=actions.ACTION_TITLES,
        assignees=_active_users(),
        tested=tested,
    )


def _proof_still_valid(form, action):
    """Return whether the submitted test proof still fits the form's request settings.

    A form sent back with errors keeps its proof in a hidden field, so Save
    stays enabled when the fix touches no request setting.
    """
    if not form.test_proof.data:
        return False
    if form.url.errors or form.content_type.errors or form.custom_headers.errors:
        return False
    url = domain.resolve_url(form.url.data, action)
    headers = getattr(form.custom_headers, "parsed", {})
    fingerprint = proofs.request_fingerprint(url, form.content_type.data, headers)
    try:
        proofs.check_proof(form.test_proof.data, current_user.account_id, fingerprint)
    except proofs.InvalidProof:
        return False
    return True


def _active_users():
    return db.session.scalars(
        db.select(User)
        .where(User.account_id == current_user.account_id, User.active.is_(True))
        .order_by(User.email)
    ).all()


def _typed_conditions():
    fields = request.form.getlist("condition_field")
    operators = request.form.getlist("condition_op")
    values = request.form.getlist("condition_value")
    return [
        {"field": field, "op": operator, "value": value}
        for field, operator, value in zip(fields, operators, values, strict=False)
    ]


def _conditions_from_request(form):
    """Return the submitted condition rows cleaned up, or None after setting conditions_error."""
    if request.method != "POST":
        return []
    try:
        return validate_conditions(
            form.event_model.data, _typed_conditions(), form.event_action.data
        )
    except InvalidConditions as error:
        form.conditions_error = str(error)
        return None


def _steps_from_request(form, typed_steps, automation=None):
    """Return the submitted steps cleaned, or None after putting each message on its step."""
    if request.method != "POST":
        return []
    submitted = [step_to_submit(step) for step in typed_steps]
    try:
        return domain.clean_steps(
            current_user.account_id, form.event_model.data, submitted, automation
        )
    except domain.InvalidSteps as error:
        for index, message in error.errors.items():
            typed_steps[index]["error"] = message
        return None


def _form_data(form, conditions=(), steps=()):
    data = dict(form.data)
    data["custom_headers_parsed"] = getattr(form.custom_headers, "parsed", {})
    data["conditions"] = list(conditions)
    data["steps"] = list(steps)
    return data


def _header_lines(headers):
    return "\n".join(f"{name}: {value}" for name, value in sorted(headers.items()))


@bp.route("/new", methods=["GET", "POST"])
@roles_required(*MANAGERS)
def new_automation():
    form = AutomationForm()
    if request.method == "GET":
        form.signing_secret.data = new_signing_secret()
    conditions = _conditions_from_request(form)
    typed_steps = steps_from_formdata(request.form)
    steps = _steps_from_request(form, typed_steps)
    if form.validate_on_submit() and conditions is not None and steps is not None:
        try:
            automation = domain.save_automation(
                current_user.account_id,
                _form_data(form, conditions, steps),
                proof=form.test_proof.data,
            )
        except proofs.InvalidProof as error:
            form.url.errors.append(str(error))
        else:
            flash(f"Saved the automation {automation.name}.", "success")
            return redirect(url_for("automations.show_automation", automation_id=automation.id))
    status = 422 if request.method == "POST" else 200
    return _render_builder(form, status=status, conditions=conditions, steps=typed_steps)


@bp.route("/<int:automation_id>/edit", methods=["GET", "POST"])
@roles_required(*MANAGERS)
def edit_automation(automation_id):
    automation = _get_automation_or_404(automation_id)
    action = domain.call_api_action(automation)
    form = AutomationForm(obj=automation)
    if request.method == "GET" and action is not None:
        form.url.data = mask_url(action.url)
        form.failure_email.data = action.failure_email
        form.content_type.data = action.content_type
        form.custom_headers.data = _header_lines(action.custom_headers or {})
    if request.method == "GET":
        conditions = list(automation.conditions or [])
        typed_steps = steps_from_actions(domain.further_steps(automation))
    else:
        conditions = _conditions_from_request(form)
        typed_steps = steps_from_formdata(request.form)
    steps = _steps_from_request(form, typed_steps, automation)
    if form.validate_on_submit() and conditions is not None and steps is not None:
        try:
            domain.save_automation(
                current_user.account_id,
                _form_data(form, conditions, steps),
                automation=automation,
                proof=form.test_proof.data,
            )
        except proofs.InvalidProof as error:
            db.session.rollback()
            form.url.errors.append(str(error))
        else:
            flash(f"Saved the automation {automation.name}.", "success")
            return redirect(url_for("automations.show_automation", automation_id=automation.id))
    status = 422 if request.method == "POST" else 200
    return _render_builder(
        form, automation, status=status, conditions=conditions, steps=typed_steps
    )


@bp.route("/test", methods=["POST"])
@roles_required(*MANAGERS)
def test_now():
    """Send a real test request and return the result fragment, with a proof on 2xx."""
    form = TestNowForm()
    if not form.validate_on_submit():
        errors = [error for field in form for error in field.errors]
        return render(
            "automations/_test_result.html",
            "automations/_test_result.html",
            outcome=None,
            form_errors=errors,
        )

    automation = None
    if form.automation_id.data:
        automation = domain_get(form.automation_id.data)
    action = domain.call_api_action(automation) if automation else None
    url = domain.resolve_url(form.url.data, action)
    secrets = action.active_secrets() if action else [form.signing_secret.data]
    headers = getattr(form.custom_headers, "parsed", {})
    outcome = _send_test(form, url, [secret for secret in secrets if secret], headers)

    proof = None
    if outcome.succeeded:
        fingerprint = proofs.request_fingerprint(url, form.content_type.data, headers)
        proof = proofs.issue_proof(current_user.account_id, fingerprint)
    # The browser enables Save only when this equals the URL field's text, so it
    # is the URL as typed, not the normalized one that was sent.
    typed_url = form.url.raw_data[0] if form.url.raw_data else ""
    return render(
        "automations/_test_result.html",
        "automations/_test_result.html",
        outcome=outcome,
        proof=proof,
        tested_url=typed_url,
        form_errors=[],
    )


def _send_test(form, url, secrets, headers):
    config = current_app.config
    sender = Sender(
        AddressPolicy.from_strings(config["PDAUTO_ALLOWED_NETWORKS"]),
        connect_timeout=config["DELIVERY_CONNECT_TIMEOUT_SECONDS"],
        total_timeout=config["TEST_NOW_TIMEOUT_SECONDS"],
    )
    payload = deliveries.build_test_payload(
        form.name.data or "Test", form.event_model.data, form.event_action.data
    )
    try:
        return sender.send(
            WebhookRequest(
                url=url,
                payload=payload,
                webhook_id=f"msg_test_{uuid.uuid4().hex}",
                secrets=tuple(secrets),
                content_type=form.content_type.data,
                custom_headers=tuple(sorted(headers.items())),
            )
        )
    finally:
        sender.close()


@bp.route("/<int:automation_id>")
@login_required
def show_automation(automation_id):
    """Show an automation and one page of its delivery log, newest first.

    `?before=` and `?after=` take a cursor from the Older and Newer links. A
    malformed cursor shows the newest page, and an unknown state shows every state.
    """
    automation = _get_automation_or_404(automation_id, include_deleted=True)
    state = request.args.get("state", "")
    if state not in delivery_log.STATES:
        state = ""
    log_page = delivery_log.read_page(
        automation.id,
        PAGE_SIZE,
        state=state,
        before=delivery_log.parse_cursor(request.args.get("before")),
        after=delivery_log.parse_cursor(request.args.get("after")),
    )
    return render(
        "automations/show.html",
        "automations/_deliveries.html",
        missed_events=domain.missed_event_count(automation),
        automation=automation,
        action=domain.call_api_action(automation),
        log_page=log_page,
        attempts=_attempts_for(log_page.deliveries),
        state=state,
    )


def _attempts_for(delivery_rows):
    ids = [delivery.id for delivery in delivery_rows]
    by_delivery = {delivery_id: [] for delivery_id in ids}
    if ids:
        rows = db.session.scalars(
            db.select(Attempt)
            .where(Attempt.delivery_id.in_(ids))
            .order_by(Attempt.delivery_id, Attempt.number)
        )
        for attempt in rows:
            by_delivery[attempt.delivery_id].append(attempt)
    return by_delivery


@bp.route("/<int:automation_id>/rotate-secret", methods=["POST"])
@roles_required(*MANAGERS)
def rotate_secret(automation_id):
    automation = _get_automation_or_404(automation_id)
    action = domain.call_api_action(automation)
    if action is None:
        abort(404)
    grace = current_app.config["SECRET_ROTATION_GRACE_SECONDS"]
    domain.rotate_secret(action, grace)
    flash(
        f"New signing secret in use. The old one is also sent for {grace // 3600} hours.",
        "success",
    )
    return redirect(url_for("automations.edit_automation", automation_id=automation.id))


@bp.route("/<int:automation_id>/duplicate", methods=["POST"])
@roles_required(*MANAGERS)
def duplicate_automation(automation_id):
    automation = _get_automation_or_404(automation_id)
    copy = domain.duplicate(automation)
    flash(
        f"Copied {automation.name} to {copy.name}. The copy is paused: "
        "resume it on its page when it is ready.",
        "success",
    )
    return redirect(url_for("automations.edit_automation", automation_id=copy.id))


@bp.route("/<int:automation_id>/pause", methods=["POST"])
@roles_required(*MANAGERS)
def pause_automation(automation_id):
    automation = _get_automation_or_404(automation_id)
    domain.pause(automation)
    flash(f"Paused {automation.name}. New changes are kept until you resume.", "success")
    return redirect(url_for("automations.show_automation", automation_id=automation.id))


@bp.route("/<int:automation_id>/resume", methods=["POST"])
@roles_required(*MANAGERS)
def resume_automation(automation_id):
    automation = _get_automation_or_404(automation_id)
    replay = request.form.get("replay") == "yes"
    held, replayed = domain.resume(automation, replay=replay)
    held_text = _count(held, "held delivery", "held deliveries")
    message = f"Resumed {automation.name}; {held_text} queued"
    if replay:
        message += f" and {_count(replayed, 'missed change', 'missed changes')} replayed"
    flash(message + ".", "success")
    return redirect(url_for("automations.show_automation", automation_id=automation.id))


def _count(number, one, many):
    return f"{number} {one if number == 1 else many}"


@bp.route("/<int:automation_id>/delete", methods=["GET", "POST"])
@roles_required(*MANAGERS)
def delete_automation(automation_id):
    """Show a confirmation page with the count of unsent deliveries on GET, delete on POST."""
    automation = _get_automation_or_404(automation_id)
    if request.method == "GET":
        unsent_count = db.session.scalar(
            db.select(db.func.count())
            .select_from(Delivery)
            .where(
                Delivery.automation_id == automation.id,
                Delivery.state.in_(("pending", "sending")),
            )
        )
        return render("automations/delete.html", automation=automation, unsent_count=unsent_count)
    domain.delete(automation)
    flash(f"Deleted {automation.name}. Its delivery log stays readable.", "success")
    return redirect(url_for("automations.list_automations"))


@bp.route("/<int:automation_id>/redeliver-failed", methods=["POST"])
@roles_required(*MANAGERS)
def redeliver_failed(automation_id):
    automation = _get_automation_or_404(automation_id)
    try:
        since = datetime.fromisoformat(request.form.get("since", ""))
    except ValueError:
        flash("Enter the date and time to redeliver from, e.g. 2026-12-01T09:00.", "error")
    else:
        # Times are stored as naive UTC, so a time with an offset is converted first.
        if since.tzinfo is not None:
            since = since.astimezone(UTC).replace(tzinfo=None)
        count = domain.redeliver_failed_since(automation, since)
        flash(
            f"{count} failed deliveries since {since:%Y-%m-%d %H:%M} UTC queued again.",
            "success",
        )
    return redirect(url_for("automations.show_automation", automation_id=automation.id))


@bp.route("/deliveries/<delivery_id>/redeliver", methods=["POST"])
@roles_required(*MANAGERS)
def redeliver(delivery_id):
    delivery = domain.get_delivery(current_user.account_id, delivery_id)
    if delivery is None:
        abort(404)
    domain.redeliver(delivery)
    flash(f"Delivery {delivery.id} queued again.", "success")
    return redirect(url_for("automations.show_automation", automation_id=delivery.automation_id))
