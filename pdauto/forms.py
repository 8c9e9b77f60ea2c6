"""Forms for records, automations and login."""

from flask_wtf import FlaskForm
from wtforms import (
    DecimalField,
    EmailField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
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
from .webhooks import InvalidURL, normalize_url


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
    email = StringField(
        "Email", validators=[Optional(), Email(), Length(max=254)], filters=[strip]
    )
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
    status = SelectField("Status", choices=[(s, s.title()) for s in DEAL_STATUSES])
    stage = StringField("Stage", validators=[Length(max=60)], filters=[strip])


RECORD_FORMS = {"person": PersonForm, "company": CompanyForm, "deal": DealForm}


def validate_webhook_url(form, field):
    try:
        field.data = normalize_url(field.data or "")
    except InvalidURL as error:
        raise ValidationError(str(error)) from None


class CallApiFields:
    """The request settings that Test Now and Save both read."""

    url = StringField(
        "URL",
        validators=[DataRequired(message="Enter the URL to call."), validate_webhook_url],
    )
    content_type = SelectField(
        "Content type",
        choices=[
            (CONTENT_TYPES[0], "JSON (application/json)"),
            (CONTENT_TYPES[1], "Form (application/x-www-form-urlencoded)"),
        ],
        default=CONTENT_TYPES[0],
    )


class AutomationForm(CallApiFields, FlaskForm):
    name = StringField(
        "Name",
        validators=[DataRequired(message="Give the automation a name."), Length(max=200)],
        filters=[strip],
        description="Receivers see it as the trigger field.",
    )
    event_model = SelectField(
        "When a", choices=[(model, model.title()) for model in EVENT_MODELS]
    )
    event_action = SelectField(
        "is", choices=[(action, action) for action in EVENT_ACTIONS]
    )
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


class TestNowForm(CallApiFields, FlaskForm):
    name = StringField("Name", filters=[strip], validators=[Length(max=200)])
    event_model = SelectField(choices=[(model, model) for model in EVENT_MODELS])
    event_action = SelectField(choices=[(action, action) for action in EVENT_ACTIONS])
    automation_id = IntegerField(validators=[Optional()])
    signing_secret = HiddenField(validators=[Optional(), Regexp(SECRET_PATTERN)])
