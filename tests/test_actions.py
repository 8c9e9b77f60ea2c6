"""Send email and Create task steps: settings checks, sandboxed templates, and running them.

Each step runs from its own delivery, so every test goes through a real event, the
RQ worker, the aiosmtpd server and, for Call API steps, a loopback receiver.
"""

from datetime import date, timedelta

import pytest

from pdauto import actions, crm
from pdauto.extensions import db
from pdauto.models import Action, Attempt, Automation, Delivery, Task, User
from tests.conftest import run_jobs
from tests.factories import make_automation


def add_step(automation, kind, settings):
    """Append a step to an automation, checked as the builder checks it."""
    cleaned = actions.validate_settings(
        kind, settings, automation.account_id, automation.event_model
    )
    position = len(automation.actions)
    automation.actions.append(Action(kind=kind, position=position, settings=cleaned))
    db.session.commit()


def deliveries_in_order():
    return db.session.scalars(
        db.select(Delivery).join(Action).order_by(Action.position, Delivery.created_at)
    ).all()


@pytest.fixture
def manager(app, users):
    with app.app_context():
        return db.session.get(User, users["manager"][0])


def new_deal(account_id, **fields):
    values = {"name": "Acme renewal", "value": 12000, "status": "open"}
    values.update(fields)
    return crm.create_record("deal", account_id, values)


# Send email


def test_email_step_renders_record_fields(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        add_step(
            automation,
            "send_email",
            {
                "to": "sales@example.com, Zoë Ångström <zoe@example.com>",
                "subject": "New deal: {{ deal.name }} ({{ deal.value }})",
                "body": "{{ record.name | upper }} is {{ deal.status }}.\n"
                "{% if deal.value > 10000 %}Big one!{% else %}Small.{% endif %}",
            },
        )
        new_deal(account_id)

    run_jobs(app)

    [sent] = smtp_server.wait_for(1)
    assert sent.subject == "New deal: Acme renewal (12000)"
    assert sent.text.replace("\r\n", "\n").strip() == "ACME RENEWAL is open.\nBig one!"
    assert sorted(sent.rcpt_tos) == ["sales@example.com", "zoe@example.com"]
    names = {address.addr_spec: address.display_name for address in sent.message["To"].addresses}
    assert names == {"sales@example.com": "", "zoe@example.com": "Zoë Ångström"}
    # The name travels encoded (RFC 2047), never as raw 8-bit header text.
    assert "=?utf-8?" in sent.message.as_string().lower()
    with app.app_context():
        email_delivery = deliveries_in_order()[1]
        assert email_delivery.state == "succeeded"
        [attempt] = email_delivery.attempts
        assert attempt.outcome == "sent"
        assert attempt.request_headers["Subject"] == sent.subject


def test_email_to_owner(app, users, receiver, smtp_server, manager):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        add_step(
            automation,
            "send_email",
            {
                "to_owner": True,
                "subject": "Yours: {{ deal.name }}",
                "body": "Owner {{ record.owner_email }}",
            },
        )
        new_deal(account_id, owner_id=manager.id)

    run_jobs(app)

    [sent] = smtp_server.wait_for(1)
    assert sent.rcpt_tos == [manager.email]
    assert sent.text.strip() == f"Owner {manager.email}"


def test_email_to_missing_owner_fails(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        add_step(automation, "send_email", {"to_owner": True, "subject": "S", "body": "B"})
        new_deal(account_id)

    run_jobs(app)

    with app.app_context():
        email_delivery = deliveries_in_order()[1]
        assert email_delivery.state == "failed"
        assert "no active owner" in email_delivery.last_error
    # The failure address of the automation hears about it.
    [notice] = smtp_server.wait_for(1)
    assert notice.rcpt_tos == ["ops@example.com"]
    assert "no active owner" in notice.text


HOSTILE_RECIPIENTS = [
    "Eve\nBcc: victim@example.com <eve@example.com>",
    "Eve\r\nBcc: victim@example.com <eve@example.com>",
    "eve@example.com\nBcc: victim@example.com",
    '"Eve\nBcc: victim@example.com" <eve@example.com>',
    "eve@example.com\rBcc: victim@example.com",
    "not an address",
    "eve@",
]


@pytest.mark.parametrize("recipient", HOSTILE_RECIPIENTS)
def test_recipient_with_header_is_refused(app, users, recipient):
    with app.app_context():
        with pytest.raises(actions.InvalidAction):
            actions.validate_settings(
                "send_email",
                {"to": [recipient], "subject": "S", "body": "B"},
                users["manager"][2],
                "deal",
            )


def test_record_text_cannot_add_headers(app, users, receiver, smtp_server):
    """A deal named with a line break and Bcc: stays in the subject's one line."""
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        add_step(
            automation,
            "send_email",
            {
                "to": ["sales@example.com"],
                "subject": "Deal {{ deal.name }}",
                "body": "{{ deal.name }}",
            },
        )
        new_deal(account_id, name="Evil\r\nBcc: victim@example.com\nX-Injected: yes")

    run_jobs(app)

    [sent] = smtp_server.wait_for(1)
    assert sent.rcpt_tos == ["sales@example.com"]
    assert sent.message["Bcc"] is None
    assert sent.message["X-Injected"] is None
    assert sent.subject == "Deal Evil Bcc: victim@example.com X-Injected: yes"


def test_saved_hostile_recipient_is_refused_at_send_time(app, users, receiver, smtp_server):
    """Settings written around the checks (say, in the database) still cannot add headers."""
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        automation.actions.append(
            Action(
                kind="send_email",
                position=1,
                settings={
                    "to": ["Eve\nBcc: victim@example.com <eve@example.com>"],
                    "subject": "S",
                    "body": "B",
                },
            )
        )
        db.session.commit()
        new_deal(account_id)

    run_jobs(app)

    with app.app_context():
        email_delivery = deliveries_in_order()[1]
        assert email_delivery.state == "failed"
        assert "line break" in email_delivery.last_error
    # Only the failure notice went out, to the failure address.
    assert all(message.rcpt_tos == ["ops@example.com"] for message in smtp_server.messages)


SANDBOX_ESCAPES = [
    "{{ record.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ record['__class__'] }}",
    "{{ self }}{{ cycler.__init__.__globals__ }}",
    "{{ config }}{{ request }}{{ lipsum.__globals__ }}",
    "{% for x in range(100000) %}{% for y in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{{ '%999999999s' | format('x') }}",
    "{{ 'x' | center(1000000000) }}",
    "{% set x = 1 %}",
    "{% macro m() %}{% endmacro %}",
    "{{ record.name.upper() }}",
    "{% include 'base.html' %}",
    "{% extends 'base.html' %}",
    "{{ unclosed",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_templates_cannot_reach_python(app, users, source):
    with app.app_context():
        with pytest.raises(actions.InvalidAction):
            actions.validate_settings(
                "send_email",
                {"to": "a@example.com", "subject": "S", "body": source},
                users["manager"][2],
                "deal",
            )


def test_render_time_sandbox_holds_for_saved_templates(app, users):
    """Rendering checks the template again, so a template saved around the checks is refused."""
    with app.app_context():
        for source in SANDBOX_ESCAPES:
            with pytest.raises(actions.TemplateProblem):
                actions.render_template_text(source, actions.sample_context("deal"), "body", 100)


def test_email_smtp_down_is_retried_then_sent(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        add_step(automation, "send_email", {"to": "a@example.com", "subject": "S", "body": "B"})
        with smtp_server.down():
            new_deal(account_id)
            run_jobs(app)
            email_delivery = deliveries_in_order()[1]
            assert email_delivery.state == "pending"
            assert email_delivery.next_attempt_at is not None
            assert email_delivery.attempts[0].outcome == "smtp_unavailable"
            delivery_id = email_delivery.id

        from pdauto import automations

        automations.redeliver(db.session.get(Delivery, delivery_id))
    run_jobs(app)

    [sent] = smtp_server.wait_for(1)
    assert sent.rcpt_tos == ["a@example.com"]
    with app.app_context():
        assert db.session.get(Delivery, delivery_id).state == "succeeded"


# Create task


def test_task_step_links_record(app, users, receiver, manager):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        add_step(
            automation,
            "create_task",
            {"assignee_id": manager.id, "due_days": "3", "title": "Call about {{ deal.name }}"},
        )
        deal_id = new_deal(account_id).id

    run_jobs(app)
    run_jobs(app)

    with app.app_context():
        [task] = db.session.scalars(db.select(Task)).all()
        assert task.title == "Call about Acme renewal"
        assert task.user_id == manager.id
        assert (task.record_model, task.record_id) == ("deal", deal_id)
        assert task.due_on == date.today() + timedelta(days=3)
        assert deliveries_in_order()[1].attempts[0].outcome == "created"


def test_task_step_checks_its_user(app, users):
    with app.app_context():
        other_account_user = users["other"][0]
        for settings, message in [
            ({"assignee_id": other_account_user, "title": "T"}, "active user of this account"),
            ({"assignee_id": "", "title": "T"}, "Choose the user"),
            ({"assignee_id": users["rep"][0], "due_days": 400, "title": "T"}, "0 to 365"),
            ({"assignee_id": users["rep"][0], "due_days": "soon", "title": "T"}, "whole number"),
            ({"assignee_id": users["rep"][0], "due_days": "²", "title": "T"}, "whole number"),
            ({"assignee_id": "²", "title": "T"}, "Choose the user"),
            ({"assignee_id": users["rep"][0], "title": " "}, "Enter the task title"),
        ]:
            with pytest.raises(actions.InvalidAction, match=message):
                actions.validate_settings("create_task", settings, users["manager"][2], "deal")


def test_task_for_deactivated_user_fails_without_retry(app, users, receiver):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        add_step(automation, "create_task", {"assignee_id": users["rep"][0], "title": "T"})
        db.session.get(User, users["rep"][0]).active = False
        db.session.commit()
        new_deal(account_id)

    run_jobs(app)

    with app.app_context():
        task_delivery = deliveries_in_order()[1]
        assert task_delivery.state == "failed"
        assert task_delivery.next_attempt_at is None
        assert db.session.scalar(db.select(db.func.count(Task.id))) == 0


# Several steps


def test_steps_run_in_order_despite_failure(app, users, receiver, smtp_server, manager):
    """Call API fails (500), the email and the task still run; each has its own outcome."""
    account_id = users["manager"][2]
    receiver.respond("/hook", status=500)
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        add_step(automation, "send_email", {"to": "a@example.com", "subject": "S", "body": "B"})
        add_step(automation, "create_task", {"assignee_id": manager.id, "title": "T"})
        new_deal(account_id)

    run_jobs(app)

    smtp_server.wait_for(1)
    with app.app_context():
        rows = deliveries_in_order()
        assert [row.action.kind for row in rows] == ["call_api", "send_email", "create_task"]
        assert [row.state for row in rows] == ["pending", "succeeded", "succeeded"]
        assert rows[0].last_status == 500
        # The steps started in their order.
        started = [
            db.session.scalar(db.select(Attempt.started_at).where(Attempt.delivery_id == row.id))
            for row in rows
        ]
        assert started == sorted(started)
        assert db.session.scalar(db.select(db.func.count(Task.id))) == 1


def test_replay_runs_every_step(app, users, receiver, smtp_server, manager):
    """Resuming with replay runs each current step for the events missed while paused."""
    from pdauto import automations

    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        add_step(automation, "send_email", {"to": "a@example.com", "subject": "S", "body": "B"})
        add_step(automation, "create_task", {"assignee_id": manager.id, "title": "T"})
        automation_id = automation.id
        automations.pause(automation)
        new_deal(account_id)
        new_deal(account_id, name="Second")
    run_jobs(app)
    assert receiver.requests == []

    with app.app_context():
        automation = db.session.get(Automation, automation_id)
        held, replayed = automations.resume(automation, replay=True)
        assert replayed == 2
    run_jobs(app)

    assert len(receiver.wait_for_requests(2)) == 2
    assert len(smtp_server.wait_for(2)) == 2
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Task.id))) == 2


def test_log_names_each_step(app, users, receiver, smtp_server, manager, manager_client):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        automation_id = automation.id
        add_step(automation, "send_email", {"to": "a@example.com", "subject": "S", "body": "B"})
        add_step(automation, "create_task", {"assignee_id": manager.id, "title": "T"})
        new_deal(account_id)
    run_jobs(app)

    page = manager_client.get(f"/automations/{automation_id}").text

    assert "1. Call API" in page
    assert "2. Send email" in page
    assert "3. Create task" in page
    assert "mailto:a@example.com" in page
    assert "POST mailto:" not in page


# Addresses and names a person types


def test_non_ascii_names_kept_readable(app, users):
    with app.app_context():
        cleaned = actions.validate_settings(
            "send_email",
            {
                "to": 'Zoë Ångström <zoe@example.com>, "Doe, Jane" <jane@example.com>',
                "subject": "S",
                "body": "B",
            },
            users["manager"][2],
            "deal",
        )
    assert cleaned["to"] == ["Zoë Ångström <zoe@example.com>", '"Doe, Jane" <jane@example.com>']


@pytest.mark.parametrize(
    ("recipient", "stored"),
    [("a@exämple.com", "a@xn--exmple-cua.com"), ("jürgen@example.com", None)],
)
def test_non_ascii_addresses(app, users, recipient, stored):
    """An IDN domain is sent in ASCII; a non-ASCII mailbox name gets a message, not a 500."""
    with app.app_context():
        settings = {"to": recipient, "subject": "S", "body": "B"}
        if stored is None:
            with pytest.raises(actions.InvalidAction, match="other than ASCII"):
                actions.validate_settings("send_email", settings, users["manager"][2], "deal")
        else:
            cleaned = actions.validate_settings("send_email", settings, users["manager"][2], "deal")
            assert cleaned["to"] == [stored]


def test_owner_with_non_ascii_address_fails_alone(app, users, receiver, smtp_server):
    """One step that cannot be sent fails with a message; the job's other deliveries go out."""
    account_id = users["manager"][2]
    with app.app_context():
        owner = User(account_id=account_id, email="jürgen@example.com", role="rep")
        owner.set_password("a long enough password")
        db.session.add(owner)
        db.session.commit()
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        add_step(automation, "send_email", {"to_owner": True, "subject": "S", "body": "B"})
        make_automation(account_id, receiver.url("/other"), name="Other", failure_email="")
        new_deal(account_id, owner_id=owner.id)

    run_jobs(app)

    assert len(receiver.wait_for_requests(2)) == 2
    with app.app_context():
        states = {
            row.action.kind + str(row.automation_id): row.state for row in deliveries_in_order()
        }
        assert sorted(states.values()) == ["failed", "succeeded", "succeeded"]
        failed = db.session.scalar(db.select(Delivery).where(Delivery.state == "failed"))
        assert "other than ASCII" in failed.last_error


def test_long_body_lines_are_wrapped(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"), failure_email="")
        add_step(
            automation, "send_email", {"to": "a@example.com", "subject": "S", "body": "x" * 5000}
        )
        new_deal(account_id)

    run_jobs(app)

    [sent] = smtp_server.wait_for(1)
    assert sent.text.replace("\r\n", "\n").replace("\n", "") == "x" * 5000
    assert max(len(line) for line in sent.message.as_string().splitlines()) <= 998


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ person.first_name }}", "'person', which is not known"),
        ("{{ deal.nme }}", "deal.nme, which a deal does not have"),
        ("{{ record.colour }}", "record.colour"),
        ("{% if nothing %}x{% endif %}", "'nothing'"),
    ],
)
def test_unknown_fields_rejected_at_save(app, users, source, message):
    with app.app_context():
        with pytest.raises(actions.InvalidAction, match=message):
            actions.validate_settings(
                "send_email",
                {"to": "a@example.com", "subject": source, "body": "B"},
                users["manager"][2],
                "deal",
            )
        # Known fields of the record, the event and the owner pass.
        actions.validate_settings(
            "create_task",
            {
                "assignee_id": users["rep"][0],
                "title": "{{ deal.name }} {{ record.owner_email }} "
                "{{ event.action }} {{ deal.value | default(0) }}",
            },
            users["manager"][2],
            "deal",
        )


def test_step_failure_email_names_the_step(app, users, receiver, smtp_server):
    account_id = users["manager"][2]
    with app.app_context():
        automation = make_automation(account_id, receiver.url("/hook"))
        add_step(automation, "send_email", {"to_owner": True, "subject": "S", "body": "B"})
        new_deal(account_id)

    run_jobs(app)

    [notice] = smtp_server.wait_for(1)
    assert notice.subject.startswith("Automation step failed:")
    assert "Step:        Send email step" in notice.text
