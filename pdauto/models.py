"""Tables and their invariants. Every row belongs to exactly one account."""

import base64
import secrets
import uuid
from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import JSON, Index, UniqueConstraint
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db

ROLES = ("admin", "manager", "rep")
EVENT_MODELS = ("person", "company", "deal")
EVENT_ACTIONS = ("created", "updated", "deleted")
DEAL_STATUSES = ("open", "won", "lost")
CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded")
DELIVERY_STATES = ("pending", "sending", "succeeded", "failed")
NOTICE_STATES = ("pending", "sending", "sent", "unknown")


def utcnow():
    """Return the current time as a naive UTC datetime, as the database stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_delivery_id():
    return f"msg_{uuid.uuid4().hex}"


def new_signing_secret():
    """Return a Standard Webhooks secret: "whsec_" and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Account(db.Model):
    __tablename__ = "accounts"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(120), nullable=False, unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    email = db.Column(db.String(254), nullable=False, unique=True)
    password_hash = db.Column(db.String(256), nullable=False)
    role = db.Column(db.String(16), nullable=False, default="rep")
    active = db.Column(db.Boolean, nullable=False, default=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    account = db.relationship(Account)

    @property
    def is_active(self):
        return self.active

    @property
    def is_admin(self):
        return self.role == "admin"

    @property
    def can_see_queues(self):
        """Return whether this user may open the RQ dashboard, which shows every account's jobs."""
        from .dashboard import operator_account_id

        return self.is_admin and self.account_id == operator_account_id()

    @property
    def can_manage_automations(self):
        return self.role in ("admin", "manager")

    def set_password(self, password):
        self.password_hash = generate_password_hash(password)

    def check_password(self, password):
        return check_password_hash(self.password_hash, password)


class RecordMixin:
    """Columns shared by the CRM records that fire triggers."""

    id = db.Column(db.Integer, primary_key=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class Company(RecordMixin, db.Model):
    __tablename__ = "companies"

    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    owner_id = db.Column(db.ForeignKey("users.id"), nullable=True)
    name = db.Column(db.String(200), nullable=False)
    website = db.Column(db.String(500), nullable=False, default="")

    event_model = "company"
    tracked_fields = ("name", "website", "owner_id")

    @property
    def display_name(self):
        return self.name


class Person(RecordMixin, db.Model):
    __tablename__ = "people"

    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    owner_id = db.Column(db.ForeignKey("users.id"), nullable=True)
    company_id = db.Column(db.ForeignKey("companies.id", ondelete="SET NULL"))
    first_name = db.Column(db.String(100), nullable=False)
    last_name = db.Column(db.String(100), nullable=False, default="")
    email = db.Column(db.String(254), nullable=False, default="")
    phone = db.Column(db.String(50), nullable=False, default="")

    company = db.relationship(Company)

    event_model = "person"
    tracked_fields = (
        "first_name",
        "last_name",
        "email",
        "phone",
        "company_id",
        "owner_id",
    )

    @property
    def display_name(self):
        return f"{self.first_name} {self.last_name}".strip()


class Deal(RecordMixin, db.Model):
    __tablename__ = "deals"

    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    owner_id = db.Column(db.ForeignKey("users.id"), nullable=True)
    company_id = db.Column(db.ForeignKey("companies.id", ondelete="SET NULL"))
    person_id = db.Column(db.ForeignKey("people.id", ondelete="SET NULL"))
    name = db.Column(db.String(200), nullable=False)
    value = db.Column(db.Numeric(14, 2), nullable=False, default=0)
    status = db.Column(db.String(16), nullable=False, default="open")
    stage = db.Column(db.String(60), nullable=False, default="")

    company = db.relationship(Company)
    person = db.relationship(Person)

    event_model = "deal"
    tracked_fields = (
        "name",
        "value",
        "status",
        "stage",
        "company_id",
        "person_id",
        "owner_id",
    )

    @property
    def display_name(self):
        return self.name


RECORD_CLASSES = {"person": Person, "company": Company, "deal": Deal}


class Event(db.Model):
    """One change of one record, written in the same transaction as the change."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_undispatched", "dispatched_at", "id"),)

    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    model = db.Column(db.String(16), nullable=False)
    action = db.Column(db.String(16), nullable=False)
    record_id = db.Column(db.Integer, nullable=False)
    changes = db.Column(JSON, nullable=False, default=dict)
    # The record's tracked fields after the change (as they were, for a delete),
    # so conditions are checked against the record at the time of the change.
    record = db.Column(JSON, nullable=False, default=dict)
    occurred_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # Set once the event has been matched to automations and its deliveries exist.
    dispatched_at = db.Column(db.DateTime, nullable=True)


class Automation(db.Model):
    __tablename__ = "automations"

    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    name = db.Column(db.String(200), nullable=False)
    event_model = db.Column(db.String(16), nullable=False)
    event_action = db.Column(db.String(16), nullable=False)
    conditions = db.Column(JSON, nullable=False, default=list)
    active = db.Column(db.Boolean, nullable=False, default=True)
    paused_at = db.Column(db.DateTime, nullable=True)
    pause_reason = db.Column(db.String(300), nullable=False, default="")
    # Start of the current run of failed attempts; None after a success.
    failing_since = db.Column(db.DateTime, nullable=True)
    pause_warning_sent_at = db.Column(db.DateTime, nullable=True)
    # Deleted automations keep their delivery history readable.
    deleted_at = db.Column(db.DateTime, nullable=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    actions = db.relationship(
        "Action",
        back_populates="automation",
        order_by="Action.position",
        cascade="all, delete-orphan",
    )

    @property
    def state(self):
        if self.deleted_at is not None:
            return "deleted"
        return "active" if self.active else "paused"


class Action(db.Model):
    """One step of an automation; Call API settings live in their own columns."""

    __tablename__ = "actions"

    id = db.Column(db.Integer, primary_key=True)
    automation_id = db.Column(db.ForeignKey("automations.id"), nullable=False, index=True)
    position = db.Column(db.Integer, nullable=False, default=0)
    kind = db.Column(db.String(16), nullable=False, default="call_api")
    # The URL as the user saved it, credentials included; show it only masked.
    url = db.Column(db.String(2048), nullable=False, default="")
    failure_email = db.Column(db.String(254), nullable=False, default="")
    content_type = db.Column(db.String(64), nullable=False, default=CONTENT_TYPES[0])
    custom_headers = db.Column(JSON, nullable=False, default=dict)
    signing_secret = db.Column(db.String(100), nullable=False, default=new_signing_secret)
    previous_signing_secret = db.Column(db.String(100), nullable=True)
    previous_secret_expires_at = db.Column(db.DateTime, nullable=True)
    settings = db.Column(JSON, nullable=False, default=dict)
    # Set when the step is removed in the builder. The row stays, because its
    # deliveries refer to it and their history stays readable.
    removed_at = db.Column(db.DateTime, nullable=True)

    automation = db.relationship(Automation, back_populates="actions")

    def active_secrets(self, now=None):
        """Return the signing secrets to sign with: the current one first."""
        now = now or utcnow()
        secrets_ = [self.signing_secret]
        if (
            self.previous_signing_secret
            and self.previous_secret_expires_at
            and self.previous_secret_expires_at > now
        ):
            secrets_.append(self.previous_signing_secret)
        return secrets_


class Delivery(db.Model):
    """One webhook to send for one (event, action)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "action_id", name="uq_deliveries_event_action"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        # The delivery log and the home page read deliveries newest first by
        # (created_at, id), and these indexes give that order with no sort.
        Index("ix_deliveries_automation_created", "automation_id", "created_at", "id"),
        Index("ix_deliveries_automation_state", "automation_id", "state", "created_at", "id"),
        Index("ix_deliveries_account_created", "account_id", "created_at", "id"),
    )

    id = db.Column(db.String(40), primary_key=True, default=new_delivery_id)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    event_id = db.Column(db.ForeignKey("events.id"), nullable=False, index=True)
    action_id = db.Column(db.ForeignKey("actions.id"), nullable=False)
    automation_id = db.Column(db.ForeignKey("automations.id"), nullable=False)
    state = db.Column(db.String(16), nullable=False, default="pending")
    attempt_count = db.Column(db.Integer, nullable=False, default=0)
    next_attempt_at = db.Column(db.DateTime, nullable=True, default=utcnow)
    lease_expires_at = db.Column(db.DateTime, nullable=True)
    last_status = db.Column(db.Integer, nullable=True)
    last_error = db.Column(db.String(500), nullable=False, default="")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    completed_at = db.Column(db.DateTime, nullable=True)

    event = db.relationship(Event)
    action = db.relationship(Action)
    automation = db.relationship(Automation)
    attempts = db.relationship("Attempt", back_populates="delivery", order_by="Attempt.number")


class Attempt(db.Model):
    """One HTTP try of a delivery."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "number", name="uq_attempts_delivery_number"),
    )

    id = db.Column(db.Integer, primary_key=True)
    delivery_id = db.Column(db.ForeignKey("deliveries.id"), nullable=False)
    number = db.Column(db.Integer, nullable=False)
    started_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    duration_ms = db.Column(db.Float, nullable=False, default=0)
    outcome = db.Column(db.String(32), nullable=False)
    succeeded = db.Column(db.Boolean, nullable=False, default=False)
    request_url = db.Column(db.String(2048), nullable=False, default="")
    request_headers = db.Column(JSON, nullable=False, default=dict)
    request_body = db.Column(db.Text, nullable=False, default="")
    response_status = db.Column(db.Integer, nullable=True)
    response_headers = db.Column(JSON, nullable=False, default=dict)
    response_body = db.Column(db.Text, nullable=False, default="")
    error = db.Column(db.String(500), nullable=False, default="")

    delivery = db.relationship(Delivery, back_populates="attempts")


class FailureNotice(db.Model):
    """One failed attempt to tell the failure address about, by email."""

    __tablename__ = "failure_notices"
    __table_args__ = (Index("ix_failure_notices_address_state", "address", "state"),)

    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    address = db.Column(db.String(254), nullable=False)
    automation_id = db.Column(db.ForeignKey("automations.id"), nullable=False)
    delivery_id = db.Column(db.ForeignKey("deliveries.id"), nullable=True)
    attempt_id = db.Column(db.ForeignKey("attempts.id"), nullable=True)
    kind = db.Column(db.String(32), nullable=False, default="failure")
    url = db.Column(db.String(2048), nullable=False, default="")
    error = db.Column(db.String(500), nullable=False, default="")
    occurred_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    state = db.Column(db.String(16), nullable=False, default="pending")
    # Notices sent in the same email share its message id.
    email_message_id = db.Column(db.String(200), nullable=True)
    sent_at = db.Column(db.DateTime, nullable=True)

    automation = db.relationship(Automation)


class Task(db.Model):
    __tablename__ = "tasks"

    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    user_id = db.Column(db.ForeignKey("users.id"), nullable=False, index=True)
    title = db.Column(db.String(300), nullable=False)
    record_model = db.Column(db.String(16), nullable=False)
    record_id = db.Column(db.Integer, nullable=False)
    due_on = db.Column(db.Date, nullable=False)
    completed_at = db.Column(db.DateTime, nullable=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class ApiToken(db.Model):
    """A user's token for the JSON API. Only its hash is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    TOKEN_PREFIX = "pdt_"
    # The first characters stay readable, so users can tell their tokens apart.
    SHOWN_PREFIX_LENGTH = 12

    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.ForeignKey("accounts.id"), nullable=False, index=True)
    user_id = db.Column(db.ForeignKey("users.id"), nullable=False, index=True)
    name = db.Column(db.String(100), nullable=False)
    prefix = db.Column(db.String(16), nullable=False)
    # SHA-256 hex of the token. A fast hash is enough, unlike for passwords: each
    # token carries 256 random bits, so there is nothing to guess from a leaked hash,
    # and the lookup on every API request stays cheap.
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime, nullable=True)
    revoked_at = db.Column(db.DateTime, nullable=True)

    user = db.relationship(User)

    @staticmethod
    def hash_token(token):
        import hashlib

        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name):
        """Add a new token of `user` to the session; return the row and the token text.

        The caller commits. The text exists only in the return value, so show it once.
        """
        token = cls.TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls(
            account_id=user.account_id,
            user_id=user.id,
            name=name,
            prefix=token[: cls.SHOWN_PREFIX_LENGTH],
            token_hash=cls.hash_token(token),
        )
        db.session.add(row)
        return row, token

    @property
    def revoked(self):
        return self.revoked_at is not None
