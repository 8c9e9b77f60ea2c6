"""The Send email and Create task actions: their settings, templates, and running them.

Subjects, bodies and task titles are templates that may use the record's
fields, such as ``{{ deal.name }}`` or ``{{ record.value }}``. They render in
Jinja's sandbox. Only fields, filters from a short list, if/else and ``~`` are
allowed, so a template can neither reach Python objects nor make a worker loop or
allocate without bound.
"""

import email.utils
import logging
import smtplib
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_mail import BadHeaderError, Message
from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .extensions import db, mail
from .models import EVENT_MODELS, Task, User
from .notify import header_text

log = logging.getLogger(__name__)

ACTION_KINDS = ("call_api", "send_email", "create_task")
ACTION_TITLES = {
    "call_api": "Call API",
    "send_email": "Send email",
    "create_task": "Create task",
}

MAX_RECIPIENTS = 20
MAX_SUBJECT_LENGTH = 300
MAX_BODY_LENGTH = 20_000
MAX_TITLE_LENGTH = 300
MAX_DUE_DAYS = 365

ALLOWED_FILTERS = frozenset(
    {
        "abs",
        "capitalize",
        "d",
        "default",
        "first",
        "float",
        "int",
        "last",
        "length",
        "lower",
        "replace",
        "round",
        "string",
        "title",
        "trim",
        "truncate",
        "upper",
    }
)
# The template nodes a user's template may contain: output, fields, filters,
# conditions and joining text. No loops, macros, assignments, calls or arithmetic.
ALLOWED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Const,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Filter,
    nodes.If,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Concat,
    nodes.Test,
    nodes.Neg,
)

SMTP_ERRORS = (smtplib.SMTPException, OSError)


class InvalidAction(ValueError):
    """Invalid settings of an action; the message names what to change."""


class TemplateProblem(ValueError):
    """A template that does not parse, uses what is not allowed, or fails to render."""


_environment = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_environment.filters = {
    name: function for name, function in _environment.filters.items() if name in ALLOWED_FILTERS
}


def check_template(source, what):
    """Raise TemplateProblem unless `source` parses and uses only what is allowed."""
    try:
        tree = _environment.parse(source)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"The {what} is not a valid template: {error.message}.") from error
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, ALLOWED_NODES):
            raise TemplateProblem(
                f"The {what} may only use fields such as {{{{ record.name }}}}, filters "
                f"and if/else; {type(node).__name__.lower()} is not allowed."
            )
        if isinstance(node, nodes.Filter | nodes.Test) and node.name not in _allowed(node):
            raise TemplateProblem(
                f"The {what} uses the {node.name!r} filter, which is not allowed."
            )
        if isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name) and _private(node):
            raise TemplateProblem(f"The {what} may not use names that start with an underscore.")


def _allowed(node):
    return ALLOWED_FILTERS if isinstance(node, nodes.Filter) else _environment.tests


def _private(node):
    if isinstance(node, nodes.Getitem):
        key = node.arg.value if isinstance(node.arg, nodes.Const) else ""
        return isinstance(key, str) and key.startswith("_")
    name = node.attr if isinstance(node, nodes.Getattr) else node.name
    return name.startswith("_")


def render_template_text(source, context, what, limit):
    """Render a user's template with `context`; return at most `limit` characters."""
    check_template(source, what)
    try:
        text = _environment.from_string(source).render(context)
    except (SecurityError, TemplateError, ArithmeticError, TypeError, ValueError) as error:
        raise TemplateProblem(f"The {what} could not be rendered: {error}.") from error
    return text[:limit]


def template_context(event, owner=None):
    """Return the names a template can use for an event: its record under several names."""
    record = dict(event.record or {})
    record["id"] = int(event.record_id)
    if owner is not None:
        record["owner_email"] = owner.email
    context = {
        "record": record,
        "event": {
            "model": event.model,
            "action": event.action,
            "changes": dict(event.changes or {}),
            "occurred_at": event.occurred_at.isoformat(timespec="seconds") + "Z",
        },
    }
    context[event.model] = record
    return context


def sample_context(model):
    """Return a context with every field empty, to check a template when it is saved."""
    from .models import RECORD_CLASSES

    record = {name: "" for name in RECORD_CLASSES[model].tracked_fields}
    record.update(id=0, owner_email="")
    return {
        "record": record,
        model: record,
        "event": {"model": model, "action": "updated", "changes": {}, "occurred_at": ""},
    }


# Settings


def validate_settings(kind, settings, account_id, event_model):
    """Return the cleaned settings of a Send email or Create task action.

    Raises InvalidAction with a message for the user. `settings` comes from a
    form or the API, so every value is checked for type and size.
    """
    if event_model not in EVENT_MODELS:
        raise InvalidAction("Choose the kind of record first.")
    if not isinstance(settings, dict):
        raise InvalidAction("Action settings must be an object.")
    if kind == "send_email":
        return _validate_email(settings, event_model)
    if kind == "create_task":
        return _validate_task(settings, account_id, event_model)
    raise InvalidAction(f"Unknown action {kind!r}; choose Send email or Create task.")


def _validate_email(settings, event_model):
    to = settings.get("to", [])
    if isinstance(to, str):
        to = _split_recipients(to)
    if not isinstance(to, list) or not all(isinstance(item, str) for item in to):
        raise InvalidAction("Recipients must be a list of email addresses.")
    recipients = [parse_recipient(item) for item in to if item.strip()]
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidAction(f"Send to at most {MAX_RECIPIENTS} addresses.")
    to_owner = settings.get("to_owner", False)
    if not isinstance(to_owner, bool):
        raise InvalidAction("to_owner must be true or false.")
    if not recipients and not to_owner:
        raise InvalidAction("Enter at least one recipient, or send to the record's owner.")

    subject = _text_setting(settings, "subject", "subject", MAX_SUBJECT_LENGTH)
    body = _text_setting(settings, "body", "body", MAX_BODY_LENGTH)
    _check_templates(event_model, (subject, "subject"), (body, "body"))
    return {
        "to": [format_recipient(*recipient) for recipient in recipients],
        "to_owner": to_owner,
        "subject": subject,
        "body": body,
    }


def _split_recipients(text):
    """Split "a@x, Name <b@y>; c@z" into one text per recipient; quoted names may hold commas."""
    if any(character in text for character in "\r\n\0"):
        raise InvalidAction("A recipient may not contain a line break.")
    return [
        format_recipient(name, address)
        for name, address in email.utils.getaddresses([text.replace(";", ",")])
        if name or address
    ]


def format_recipient(name, address):
    """Return "Name <address>" as a person reads it; the mailer encodes it when it sends.

    email.utils.formataddr would encode a name with non-ASCII letters (RFC 2047)
    already here, and the builder would then show the encoded text.
    """
    if not name:
        return address
    if any(character in name for character in '()<>[]:;@\\,."'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _check_templates(model, *templates):
    """Raise InvalidAction unless each (source, what) parses, uses only what is allowed,
    and names only fields that a record of `model` has.

    Whether a template renders depends on the record, so a failure to render
    is reported on the delivery that met it.
    """
    for source, what in templates:
        try:
            check_template(source, what)
            _check_names(source, what, model)
        except TemplateProblem as error:
            raise InvalidAction(str(error)) from error


def _check_names(source, what, model):
    """Raise TemplateProblem for a name or a record field that the template cannot use."""
    known = {name: set(fields) for name, fields in _template_names(model).items()}
    tree = _environment.parse(source)
    for node in tree.find_all(nodes.Name):
        if node.name not in known:
            raise TemplateProblem(
                f"The {what} uses {node.name!r}, which is not known here; use "
                f"{', '.join(sorted(known))}."
            )
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.attr not in known[node.node.name]:
            fields = ", ".join(sorted(known[node.node.name]))
            raise TemplateProblem(
                f"The {what} uses {node.node.name}.{node.attr}, which a {model} does not "
                f"have; its fields are {fields}."
            )


def _template_names(model):
    """Return the names a template for `model` can use, each with its fields."""
    context = sample_context(model)
    return {name: list(value) for name, value in context.items()}


def parse_recipient(text):
    """Return (display name, address) for one recipient, or raise InvalidAction.

    A line break anywhere is refused, so a name cannot carry a header of its own.
    """
    if any(character in text for character in "\r\n\0"):
        raise InvalidAction("A recipient may not contain a line break.")
    parsed = email.utils.getaddresses([text.strip()])
    if len(parsed) != 1:
        raise InvalidAction(f"Enter one address per recipient: {text.strip()!r}.")
    name, address = parsed[0]
    if not address:
        raise InvalidAction(f"{text.strip()!r} is not an email address.")
    address = ascii_address(address)
    if len(name) > 100:
        raise InvalidAction("A recipient's name may have at most 100 characters.")
    return name, address


def ascii_address(address):
    """Return `address` with its domain in ASCII (IDNA), or raise InvalidAction.

    A mailbox name with non-ASCII letters needs SMTPUTF8, which pdauto does not
    use, so such an address is rejected with a message rather than failing later.
    """
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as error:
        raise InvalidAction(f"{address!r} is not a valid email address: {error}") from error
    if checked.ascii_email is None:
        raise InvalidAction(
            f"{address!r} has letters other than ASCII before the @, which pdauto "
            "cannot send to; use another address."
        )
    return checked.ascii_email


def _validate_task(settings, account_id, event_model):
    assignee_id = settings.get("assignee_id")
    if isinstance(assignee_id, str) and _is_whole_number(assignee_id):
        assignee_id = int(assignee_id)
    if not isinstance(assignee_id, int) or isinstance(assignee_id, bool):
        raise InvalidAction("Choose the user the task is for.")
    assignee = db.session.get(User, assignee_id)
    if assignee is None or assignee.account_id != account_id or not assignee.active:
        raise InvalidAction("Choose an active user of this account for the task.")

    due_days = settings.get("due_days", 0)
    if isinstance(due_days, str) and _is_whole_number(due_days):
        due_days = int(due_days)
    if not isinstance(due_days, int) or isinstance(due_days, bool):
        raise InvalidAction("Enter the days until the task is due as a whole number.")
    if not 0 <= due_days <= MAX_DUE_DAYS:
        raise InvalidAction(f"The task can be due in 0 to {MAX_DUE_DAYS} days.")

    title = _text_setting(settings, "title", "task title", MAX_TITLE_LENGTH)
    _check_templates(event_model, (title, "task title"))
    return {"assignee_id": assignee_id, "due_days": due_days, "title": title}


def _is_whole_number(text):
    """Return whether `text` is ASCII digits, which int() reads; "²" is a digit to isdigit()."""
    text = text.strip()
    return text.isascii() and text.isdigit()


def _text_setting(settings, key, what, limit):
    value = settings.get(key, "")
    if not isinstance(value, str):
        raise InvalidAction(f"The {what} must be text.")
    value = value.strip()
    if not value:
        raise InvalidAction(f"Enter the {what}.")
    if len(value) > limit:
        raise InvalidAction(f"The {what} may have at most {limit:,} characters.")
    return value


def describe(action):
    """Return one line that describes an action, for lists and the log."""
    settings = action.settings or {}
    if action.kind == "send_email":
        recipients = list(settings.get("to", []))
        if settings.get("to_owner"):
            recipients.append("the record's owner")
        return f"Send email to {', '.join(recipients)}: {settings.get('subject', '')}"
    if action.kind == "create_task":
        assignee = db.session.get(User, settings.get("assignee_id") or 0)
        who = assignee.email if assignee else "a removed user"
        days = settings.get("due_days", 0)
        return f"Create task for {who}, due in {days} days: {settings.get('title', '')}"
    return "Call API"


# Running


@dataclass
class ActionOutcome:
    """The result of running an action, in the shape of a webhook Outcome for the log."""

    kind: str
    succeeded: bool
    error: str = ""
    retryable: bool = False
    duration_ms: float = 0.0
    request_url: str = ""
    request_headers: dict = field(default_factory=dict)
    request_body: str = ""
    status: int | None = None
    response_headers: dict = field(default_factory=dict)
    response_body: str = ""
    retry_after_seconds: float | None = None


def run(action, event, account_id):
    """Run a Send email or Create task action for an event and return its outcome.

    A Create task adds the task to the current session. The caller commits it
    together with the delivery's outcome, so a delivery that succeeded made one task.
    """
    started = time.monotonic()
    try:
        if action.kind == "send_email":
            outcome = _send_email(action, event, account_id)
        elif action.kind == "create_task":
            outcome = _create_task(action, event, account_id)
        else:
            outcome = ActionOutcome("failed", False, f"unknown action {action.kind!r}")
    except Exception as error:  # one step's fault must not stop the job's other deliveries
        log.exception("action %s failed on event %s", action.id, event.id)
        outcome = ActionOutcome("failed", False, f"the step failed: {error}")
    outcome.duration_ms = (time.monotonic() - started) * 1000
    return outcome


def _record_owner(event, account_id):
    owner_id = (event.record or {}).get("owner_id")
    if not owner_id:
        return None
    owner = db.session.get(User, owner_id)
    if owner is None or owner.account_id != account_id or not owner.active:
        return None
    return owner


def _send_email(action, event, account_id):
    settings = action.settings or {}
    owner = _record_owner(event, account_id)
    context = template_context(event, owner)
    try:
        subject = render_template_text(
            settings.get("subject", ""), context, "subject", MAX_SUBJECT_LENGTH
        )
        body = render_template_text(settings.get("body", ""), context, "body", MAX_BODY_LENGTH)
    except TemplateProblem as error:
        return ActionOutcome("template_error", False, str(error))

    recipients = []
    try:
        for text in settings.get("to", []):
            recipients.append(parse_recipient(text))
    except InvalidAction as error:
        return ActionOutcome("invalid", False, str(error))
    if settings.get("to_owner"):
        if owner is not None:
            try:
                recipients.append(("", ascii_address(owner.email)))
            except InvalidAction as error:
                return ActionOutcome("invalid", False, f"the record's owner: {error}")
        elif not recipients:
            return ActionOutcome("no_recipient", False, "the record has no active owner to email")

    message = Message(
        subject=header_text(subject),
        # Flask-Mail encodes names with other than ASCII letters (RFC 2047).
        recipients=recipients,
        body=_wrap_long_lines(body),
        extra_headers={"Auto-Submitted": "auto-generated"},
    )
    headers = {"To": ", ".join(address for _, address in recipients), "Subject": message.subject}
    outcome = ActionOutcome(
        "sent",
        True,
        request_url="mailto:" + ",".join(address for _, address in recipients),
        request_headers=headers,
        request_body=body,
    )
    _deliver_message(message, outcome)
    return outcome


def _deliver_message(message, outcome):
    """Send `message` through the mail server and set the failure on `outcome`, if any."""
    try:
        with mail.connect() as connection:
            if connection.host is not None and connection.host.sock is not None:
                connection.host.sock.settimeout(current_app.config["MAIL_TIMEOUT_SECONDS"])
            connection.send(message)
    except BadHeaderError:
        outcome.kind, outcome.succeeded = "invalid", False
        outcome.error = "the email's recipients or subject contain a line break"
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as error:
        outcome.kind, outcome.succeeded = "rejected", False
        outcome.error = f"the mail server refused the email: {error}"
    except smtplib.SMTPDataError as error:
        outcome.kind, outcome.succeeded = "rejected", False
        outcome.error = f"the mail server refused the email: {error}"
        outcome.retryable = 400 <= error.smtp_code < 500
    except (smtplib.SMTPConnectError, ConnectionRefusedError, TimeoutError) as error:
        outcome.kind, outcome.succeeded, outcome.retryable = "smtp_unavailable", False, True
        outcome.error = f"could not reach the mail server: {error}"
    except SMTP_ERRORS as error:
        # The server may have taken the message before the connection broke, so
        # sending it again could send it twice.
        outcome.kind, outcome.succeeded = "unknown", False
        outcome.error = (
            f"the connection to the mail server broke; the email may have been sent: {error}"
        )


def _wrap_long_lines(text, width=900):
    """Break lines longer than `width`, because mail servers reject lines over 998 bytes."""
    lines = []
    for line in text.splitlines():
        while len(line) > width:
            lines.append(line[:width])
            line = line[width:]
        lines.append(line)
    return "\n".join(lines)


def _create_task(action, event, account_id):
    settings = action.settings or {}
    assignee = db.session.get(User, settings.get("assignee_id") or 0)
    if assignee is None or assignee.account_id != account_id or not assignee.active:
        return ActionOutcome("no_assignee", False, "the task's user was removed or deactivated")
    context = template_context(event, _record_owner(event, account_id))
    try:
        title = render_template_text(
            settings.get("title", ""), context, "task title", MAX_TITLE_LENGTH
        )
    except TemplateProblem as error:
        return ActionOutcome("template_error", False, str(error))
    title = header_text(title) or "Follow up"
    due_on = date.today() + timedelta(days=int(settings.get("due_days", 0)))
    task = Task(
        account_id=account_id,
        user_id=assignee.id,
        title=title,
        record_model=event.model,
        record_id=int(event.record_id),
        due_on=due_on,
    )
    db.session.add(task)
    return ActionOutcome(
        "created",
        True,
        request_url=f"task:{assignee.email}",
        request_headers={"Assignee": assignee.email, "Due": due_on.isoformat()},
        request_body=title,
    )
