"""The tasks page: each user's open and overdue tasks, and completing them."""

import logging
from datetime import date

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from ..extensions import db
from ..models import RECORD_CLASSES, Task, utcnow

log = logging.getLogger(__name__)

bp = Blueprint("tasks", __name__)

COLLECTIONS = {"person": "people", "company": "companies", "deal": "deals"}


@bp.route("/tasks")
@login_required
def list_tasks():
    open_tasks = db.session.scalars(
        db.select(Task)
        .where(
            Task.account_id == current_user.account_id,
            Task.user_id == current_user.id,
            Task.completed_at.is_(None),
        )
        .order_by(Task.due_on, Task.id)
    ).all()
    done = db.session.scalars(
        db.select(Task)
        .where(
            Task.account_id == current_user.account_id,
            Task.user_id == current_user.id,
            Task.completed_at.is_not(None),
        )
        .order_by(Task.completed_at.desc())
        .limit(20)
    ).all()
    today = date.today()
    return render_template(
        "tasks/list.html",
        overdue=[task for task in open_tasks if task.due_on < today],
        upcoming=[task for task in open_tasks if task.due_on >= today],
        done=done,
        today=today,
        record_links=_record_links(open_tasks + list(done)),
    )


def _record_links(tasks):
    """Return {task id: (record name, URL)} for the tasks whose record still exists."""
    links = {}
    for task in tasks:
        record_class = RECORD_CLASSES.get(task.record_model)
        record = db.session.get(record_class, task.record_id) if record_class else None
        if record is not None and record.account_id == task.account_id:
            url = url_for(
                "records.edit_record",
                collection=COLLECTIONS[task.record_model],
                record_id=record.id,
            )
            links[task.id] = (record.display_name, url)
    return links


@bp.route("/tasks/<int:task_id>/complete", methods=["POST"])
@login_required
def complete_task(task_id):
    task = db.session.get(Task, task_id)
    if task is None or task.account_id != current_user.account_id:
        abort(404)
    # Reps complete their own tasks; managers and admins any task of the account.
    if task.user_id != current_user.id and not current_user.can_manage_automations:
        abort(403)
    if task.completed_at is None:
        task.completed_at = utcnow()
        db.session.commit()
        log.info("user %s completed task %s", current_user.id, task.id)
    flash(f"Completed: {task.title}", "success")
    return redirect(url_for("tasks.list_tasks"))
