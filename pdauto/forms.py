"""Forms for records, automations and login."""

import ipaddress
from urllib.parse import urlsplit

from flask import current_app
from flask_wtf import FlaskForm
from wtforms import (
    DecimalField,
    EmailField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    Email,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from .models import CONTENT_TYPES, DEAL_STATUSES, EVENT_ACTIONS, EVENT_MODELS
from .webhooks import (
    AddressNotAllowed,
    AddressPolicy,
    InvalidURL,
    normalize_url,
    validate_custom_headers,
)

# A Standard Webhooks secret: "whsec_" and base64.
SECRET_PATTERN = r"^whsec_[A-Za-z0-9+/]{24,}={0,2}$"


def strip(value):
    return value.strip() if isinstance(value, str) else value


class LoginForm(FlaskForm):
    email = StringField("Email", validators=[DataRequired(), Length(max=254)], filters=[strip])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class PersonForm(FlaskForm):
    first_name = StringField(
        "First name", validators=[DataRequired(), Length(max=100)], filters=[strip]
    )
    last_name = StringField("Last name", validators=[Length(max=100)], filters=[strip])
    email = StringField("Email", validators=[Optional(), Email(), Length(max=254)], filters=[strip])
    phone = StringField("Phone", validators=[Length(max=50)], filters=[strip])


class CompanyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)], filters=[strip])
    website = StringField("Website", validators=[Length(max=500)], filters=[strip])


class DealForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)], filters=[strip])
    value = DecimalField(
        "Value",
        places=2,
        validators=[InputRequired(), NumberRange(min=0, max=999_999_999_999)],
        default=0,
    )
    status = SelectField("Status", choices=[SelectChoice(s, s.title()) for s in DEAL_STATUSES])
    stage = StringField("Stage", validators=[Length(max=60)], filters=[strip])


RECORD_FORMS = {"person": PersonForm, "company": CompanyForm, "deal": DealForm}


def validate_webhook_url(form, field):
    try:
        field.data = normalize_url(field.data or "")
    except InvalidURL as error:
        raise ValidationError(str(error)) from None


def validate_url_address(form, field):
    """Reject a URL whose host is an IP address or localhost that the address policy refuses.

    A test proof can outlive a change of PDAUTO_ALLOWED_NETWORKS, so Save checks
    again. Host names are checked only when a request connects, because the
    addresses they resolve to can change.
    """
    if field.errors:
        return
    host = urlsplit(field.data).hostname or ""
    name = host.rstrip(".")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if name != "localhost" and not name.endswith(".localhost"):
            return
        addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    policy = AddressPolicy.from_strings(current_app.config["PDAUTO_ALLOWED_NETWORKS"])
    for address in addresses:
        try:
            policy.check(address, host=host)
        except AddressNotAllowed as error:
            raise ValidationError(str(error)) from None


def parse_header_lines(text):
    """Parse "Name: value" lines into pairs; raise ValueError naming a bad line."""
    pairs = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f'line {number} is not "Name: value": {line.strip()[:80]}')
        pairs.append((name.strip(), value.strip()))
    return validate_custom_headers(pairs)


def validate_header_lines(form, field):
    try:
        field.parsed = dict(parse_header_lines(field.data))
    except ValueError as error:
        raise ValidationError(f"Custom headers: {error}") from None


class CallApiFields:
    """The request settings that Test Now and Save both read."""

    url = StringField(
        "URL",
        validators=[
            DataRequired(message="Enter the URL to call."),
            validate_webhook_url,
        ],
    )
    content_type = SelectField(
        "Content type",
        choices=[
            SelectChoice(CONTENT_TYPES[0], "JSON (application/json)"),
            SelectChoice(CONTENT_TYPES[1], "Form (application/x-www-form-urlencoded)"),
        ],
        default=CONTENT_TYPES[0],
    )
    custom_headers = TextAreaField(
        "Custom headers",
        validators=[Length(max=4000), validate_header_lines],
        description='One "Name: value" per line, e.g. "Authorization: Bearer ...".',
    )


class AutomationForm(CallApiFields, FlaskForm):
    name = StringField(
        "Name",
        validators=[
            DataRequired(message="Give the automation a name."),
            Length(max=200),
        ],
        filters=[strip],
        description="Receivers see it as the trigger field.",
    )
    event_model = SelectField(
        "When a", choices=[SelectChoice(model, model.title()) for model in EVENT_MODELS]
    )
    event_action = SelectField("is", choices=[SelectChoice(action) for action in EVENT_ACTIONS])
    failure_email = EmailField(
        "Failure notification email",
        validators=[
            DataRequired(message="Enter the address to tell about failures."),
            Email(message="Enter a valid email address."),
            Length(max=254),
        ],
        filters=[strip],
    )
    test_proof = HiddenField()
    signing_secret = HiddenField(validators=[Optional(), Regexp(SECRET_PATTERN)])

    def validate_url(self, field):
        validate_url_address(self, field)

    def validate_failure_email(self, field):
        from .actions import InvalidAction, ascii_address

        if not field.data:
            return
        try:
            field.data = ascii_address(field.data)
        except InvalidAction as error:
            raise ValidationError(str(error)) from error


class TestNowForm(CallApiFields, FlaskForm):
    name = StringField("Name", filters=[strip], validators=[Length(max=200)])
    event_model = SelectField(choices=[SelectChoice(model) for model in EVENT_MODELS])
    event_action = SelectField(choices=[SelectChoice(action) for action in EVENT_ACTIONS])
    automation_id = IntegerField(validators=[Optional()])
    signing_secret = HiddenField(validators=[Optional(), Regexp(SECRET_PATTERN)])


ROLE_CHOICES = [
    SelectChoice("rep", "Rep: works on records and their own tasks"),
    SelectChoice("manager", "Manager: also builds automations"),
    SelectChoice("admin", "Admin: also manages users and sees the queues"),
]
PASSWORD_LENGTH = Length(min=10, max=200, message="Use 10 to 200 characters.")


class NewUserForm(FlaskForm):
    email = EmailField(
        "Email",
        validators=[DataRequired(), Email(check_deliverability=False), Length(max=254)],
        filters=[strip],
    )
    role = SelectField("Role", choices=ROLE_CHOICES, default="rep")
    password = PasswordField(
        "Password",
        validators=[DataRequired(), PASSWORD_LENGTH],
        description="Give it to the user; they can change it once logged in.",
    )


class EditUserForm(FlaskForm):
    role = SelectField("Role", choices=ROLE_CHOICES)


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired()])
    new_password = PasswordField("New password", validators=[DataRequired(), PASSWORD_LENGTH])


# The builder's further steps. Each step's inputs are named "step-<key>-<setting>",
# and the "step_key" inputs list the keys in the order the steps run, so a checkbox
# that is not checked (and so not sent) still belongs to the right step.
STEP_TEXT_SETTINGS = ("kind", "id", "to", "subject", "body", "assignee_id", "due_days", "title")
NEW_STEP_KEY = "__key__"


def blank_step(kind):
    """Return the inputs of a new step of `kind`, as the builder's templates show it."""
    row = dict.fromkeys(STEP_TEXT_SETTINGS, "")
    row.update(key=NEW_STEP_KEY, kind=kind, to_owner=False, due_days="1", error="")
    return row


def steps_from_formdata(formdata):
    """Return the submitted steps as the user typed them, in the order they run."""
    rows = []
    for key in dict.fromkeys(formdata.getlist("step_key")):
        row = {name: formdata.get(f"step-{key}-{name}", "") for name in STEP_TEXT_SETTINGS}
        row.update(key=key, to_owner=formdata.get(f"step-{key}-to_owner") == "yes", error="")
        rows.append(row)
    return rows


def steps_from_actions(actions):
    """Return the inputs that show saved Send email and Create task actions."""
    rows = []
    for action in actions:
        settings = action.settings or {}
        row = blank_step(action.kind)
        row.update(
            key=f"s{action.id}",
            id=str(action.id),
            to=", ".join(settings.get("to", [])),
            to_owner=bool(settings.get("to_owner")),
            subject=settings.get("subject", ""),
            body=settings.get("body", ""),
            assignee_id=str(settings.get("assignee_id", "")),
            due_days=str(settings.get("due_days", "")),
            title=settings.get("title", ""),
        )
        rows.append(row)
    return rows


def whole_number(text):
    """Return `text` as an int if it is ASCII digits, else None."""
    text = text.strip()
    # str.isdigit() alone also accepts digits such as "²" that int() rejects.
    return int(text) if text.isascii() and text.isdigit() else None


def step_to_submit(row):
    """Return a typed step as clean_steps takes it: kind, id and raw settings."""
    action_id = whole_number(row["id"])
    if action_id is None and row["id"].strip():
        # No action has id 0, so clean_steps rejects the step.
        action_id = 0
    if row["kind"] == "send_email":
        settings = {
            "to": row["to"],
            "to_owner": row["to_owner"],
            "subject": row["subject"],
            "body": row["body"],
        }
    else:
        settings = {
            "assignee_id": whole_number(row["assignee_id"]),
            "due_days": whole_number(row["due_days"]),
            "title": row["title"],
        }
    return {"id": action_id, "kind": row["kind"], "settings": settings}
