"""Settings read from the environment, with defaults that work on one machine."""

import os
from pathlib import Path

INSTANCE_DIR = Path(os.environ.get("PDAUTO_INSTANCE_DIR", Path.cwd() / "instance"))


def _int(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a whole number, got {raw!r}") from None


def _float(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a number, got {raw!r}") from None


def _list(name, default=""):
    raw = os.environ.get(name, default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def _retry_schedule(name, default):
    """Parse a comma-separated list of delays in seconds."""
    raw = os.environ.get(name, default)
    try:
        delays = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise RuntimeError(f"{name} must be comma-separated whole seconds, got {raw!r}") from None
    if not delays or any(delay < 0 for delay in delays):
        raise RuntimeError(f"{name} needs at least one delay of 0 seconds or more")
    return delays


def load_settings():
    """Build the settings mapping from the environment."""
    return {
        "ENV": os.environ.get("PDAUTO_ENV", "development"),
        "SECRET_KEY": os.environ.get("SECRET_KEY"),
        "SQLALCHEMY_DATABASE_URI": os.environ.get(
            "DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'pdauto.sqlite3'}"
        ),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        # Prefix of every Redis key and RQ queue name, so that several
        # installations (or test runs) can share one Redis server.
        "PDAUTO_REDIS_PREFIX": os.environ.get("PDAUTO_REDIS_PREFIX", "pdauto"),
        "MAIL_SERVER": os.environ.get("MAIL_SERVER", "127.0.0.1"),
        "MAIL_PORT": _int("MAIL_PORT", 8025),
        "MAIL_USERNAME": os.environ.get("MAIL_USERNAME"),
        "MAIL_PASSWORD": os.environ.get("MAIL_PASSWORD"),
        "MAIL_USE_TLS": os.environ.get("MAIL_USE_TLS", "") == "1",
        "MAIL_DEFAULT_SENDER": os.environ.get("MAIL_DEFAULT_SENDER", "pdauto <pdauto@localhost>"),
        "MAIL_TIMEOUT_SECONDS": _float("MAIL_TIMEOUT_SECONDS", 10.0),
        "PDAUTO_BASE_URL": os.environ.get("PDAUTO_BASE_URL", "http://127.0.0.1:5000"),
        "PDAUTO_ALLOWED_NETWORKS": _list("PDAUTO_ALLOWED_NETWORKS"),
        "DELIVERY_CONNECT_TIMEOUT_SECONDS": _float("DELIVERY_CONNECT_TIMEOUT_SECONDS", 5.0),
        "DELIVERY_TIMEOUT_SECONDS": _float("DELIVERY_TIMEOUT_SECONDS", 15.0),
        "TEST_NOW_TIMEOUT_SECONDS": _float("TEST_NOW_TIMEOUT_SECONDS", 10.0),
        # Delays before the 2nd, 3rd, ... attempt; about two days in all.
        "DELIVERY_RETRY_SCHEDULE_SECONDS": _retry_schedule(
            "DELIVERY_RETRY_SCHEDULE_SECONDS",
            "30,120,600,1800,3600,7200,14400,28800,43200,43200,43200",
        ),
        # An automation whose attempts all failed for this long is paused;
        # its failure address is warned at the first setting.
        "AUTO_PAUSE_WARNING_SECONDS": _int("AUTO_PAUSE_WARNING_SECONDS", 2 * 86400),
        "AUTO_PAUSE_SECONDS": _int("AUTO_PAUSE_SECONDS", 3 * 86400),
        "SECRET_ROTATION_GRACE_SECONDS": _int("SECRET_ROTATION_GRACE_SECONDS", 86400),
        "DELIVERY_LEASE_SECONDS": _int("DELIVERY_LEASE_SECONDS", 120),
        # A dispatch job sends first attempts itself for this long at most; the
        # deliveries left then get jobs of their own. Kept below the job timeout (60 s)
        # less one request's DELIVERY_TIMEOUT_SECONDS.
        "DISPATCH_SEND_BUDGET_SECONDS": _float("DISPATCH_SEND_BUDGET_SECONDS", 20.0),
        # The maximum number of events one dispatch job reads at a time.
        "DISPATCH_BATCH_EVENTS": _int("DISPATCH_BATCH_EVENTS", 100),
        "SWEEP_INTERVAL_SECONDS": _float("SWEEP_INTERVAL_SECONDS", 15.0),
        "TEST_PROOF_MAX_AGE_SECONDS": _int("TEST_PROOF_MAX_AGE_SECONDS", 3600),
        "JOB_RESULT_TTL_SECONDS": _int("JOB_RESULT_TTL_SECONDS", 600),
        "JOB_FAILURE_TTL_SECONDS": _int("JOB_FAILURE_TTL_SECONDS", 7 * 86400),
        "WTF_CSRF_TIME_LIMIT": None,
        # /metrics is served to a bearer of this token or to clients in these networks.
        "PDAUTO_METRICS_TOKEN": os.environ.get("PDAUTO_METRICS_TOKEN"),
        "PDAUTO_METRICS_NETWORKS": _list("PDAUTO_METRICS_NETWORKS", "127.0.0.0/8,::1/128"),
        "PDAUTO_LOG_LEVEL": os.environ.get("PDAUTO_LOG_LEVEL", "INFO"),
        # "text" or "json" (one JSON object per line).
        "PDAUTO_LOG_FORMAT": os.environ.get("PDAUTO_LOG_FORMAT", "text"),
        # The admins of this account reach the RQ dashboard, which shows the jobs of
        # every account. Unset, the account created first operates the installation.
        "PDAUTO_OPERATOR_ACCOUNT_ID": _int("PDAUTO_OPERATOR_ACCOUNT_ID", None),
    }
