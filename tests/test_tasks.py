"""Check the tasks page: each user's open and overdue tasks, and completing them."""

from datetime import date, timedelta

from pdauto import crm
from pdauto.extensions import db
from pdauto.models import Task
from tests.conftest import login


def add_task(user_id, account_id, title, due_in_days, record_id=1):
    task = Task(
        account_id=account_id,
        user_id=user_id,
        title=title,
        record_model="deal",
        record_id=record_id,
        due_on=date.today() + timedelta(days=due_in_days),
    )
    db.session.add(task)
    db.session.commit()
    return task.id


def test_own_open_and_overdue_tasks(app, users):
    rep_id, rep_email, account_id = users["rep"]
    with app.app_context():
        deal = crm.create_record("deal", account_id, {"name": "Big deal", "value": 5})
        add_task(rep_id, account_id, "Call the buyer", -2, record_id=deal.id)
        add_task(rep_id, account_id, "Send the contract", 3, record_id=deal.id)
        add_task(users["manager"][0], account_id, "Manager's own task", 1)
    client = app.test_client()
    login(client, rep_email)

    page = client.get("/tasks").text

    overdue = page.split("<h2>Overdue</h2>")[1].split("<h2>Open</h2>")[0]
    upcoming = page.split("<h2>Open</h2>")[1]
    assert "Call the buyer" in overdue
    assert "2 days overdue" in overdue
    assert "Send the contract" in upcoming
    assert "Big deal" in overdue
    assert "Manager&#39;s own task" not in page
    assert "Manager's own task" not in page


def test_complete_own_task(app, users):
    rep_id, rep_email, account_id = users["rep"]
    with app.app_context():
        task_id = add_task(rep_id, account_id, "Call the buyer", 0)
    client = app.test_client()
    login(client, rep_email)

    response = client.post(f"/tasks/{task_id}/complete")

    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(Task, task_id).completed_at is not None
    page = client.get("/tasks").text
    assert "Recently completed" in page
    assert "No open tasks." in page


def test_rep_cannot_complete_others_task(app, users):
    account_id = users["rep"][2]
    with app.app_context():
        task_id = add_task(users["manager"][0], account_id, "Manager's task", 0)
    client = app.test_client()
    login(client, users["rep"][1])

    assert client.post(f"/tasks/{task_id}/complete").status_code == 403


def test_manager_completes_reps_task(app, users, manager_client):
    with app.app_context():
        task_id = add_task(users["rep"][0], users["rep"][2], "Rep's task", 0)

    assert manager_client.post(f"/tasks/{task_id}/complete").status_code == 302


def test_other_account_task_is_404(app, users, manager_client):
    with app.app_context():
        task_id = add_task(users["other"][0], users["other"][2], "Globex task", 0)

    assert manager_client.post(f"/tasks/{task_id}/complete").status_code == 404
    assert "Globex task" not in manager_client.get("/tasks").text
