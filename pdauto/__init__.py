"""pdauto: CRM automations that call webhooks when people, companies and deals change."""

import logging
from importlib.metadata import PackageNotFoundError, version

from flask import Flask

from . import config as config_module
from .extensions import csrf, db, login_manager, mail, migrate

try:
    __version__ = version("pdauto")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

log = logging.getLogger(__name__)

DEVELOPMENT_SECRET_KEY = "development-only-secret-key"


def create_app(config=None):
    """Build the web app; `config` overrides settings read from the environment."""
    app = Flask(__name__, instance_relative_config=False)
    load_config(app, config)
    init_logging(app)
    init_extensions(app)
    register_blueprints(app)
    mount_rq_dashboard(app)
    register_error_handlers(app)
    register_cli(app)
    register_security_headers(app)
    register_template_filters(app)
    return app


def load_config(app, overrides):
    app.config.update(config_module.load_settings())
    if overrides:
        app.config.update(overrides)

    if not app.config.get("SECRET_KEY"):
        if app.config["ENV"] == "production":
            raise RuntimeError("SECRET_KEY is not set; production needs a long random value")
        app.config["SECRET_KEY"] = DEVELOPMENT_SECRET_KEY

    database_uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if database_uri.startswith("sqlite:///") and ":memory:" not in database_uri:
        config_module.INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
    if database_uri.startswith("postgresql://"):
        # psycopg 3 is the installed driver.
        app.config["SQLALCHEMY_DATABASE_URI"] = database_uri.replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
    app.config["RQ_DASHBOARD_REDIS_URL"] = app.config["REDIS_URL"]
    # Flask's defaults exist already (SameSite None, Secure False), so setdefault
    # would never apply: set them unless the caller's overrides did.
    cookie_settings = {
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SECURE": app.config["PDAUTO_BASE_URL"].startswith("https://"),
    }
    for key, value in cookie_settings.items():
        if key not in (overrides or {}):
            app.config[key] = value


def init_logging(app):
    if app.config.get("TESTING"):
        return  # pytest captures the records itself.
    from .logs import configure_logging

    configure_logging(app.config["PDAUTO_LOG_LEVEL"], app.config["PDAUTO_LOG_FORMAT"])


def init_extensions(app):
    from pathlib import Path

    from . import models  # noqa: F401  (registers the tables)
    from .db_setup import configure_engine

    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=str(Path(__file__).parent / "migrations"),
        render_as_batch=True,
    )
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to see that page."
    login_manager.login_message_category = "info"
    mail.init_app(app)
    csrf.init_app(app)
    configure_engine(app)


def register_blueprints(app):
    from .views import api, auth, automations, main, records, tasks, tokens, users

    app.register_blueprint(auth.bp)
    app.register_blueprint(main.bp)
    app.register_blueprint(records.bp)
    app.register_blueprint(automations.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(tokens.bp)
    app.register_blueprint(api.bp)


def mount_rq_dashboard(app):
    from .dashboard import mount

    mount(app)


def register_error_handlers(app):
    from .views.errors import register

    register(app)


def register_cli(app):
    from .cli import register

    register(app)


# No inline scripts or styles: htmx runs from its file, with its indicator
# styles and eval turned off in the htmx-config meta tag.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The RQ dashboard's pages carry inline scripts and templates that it compiles
# at run time, so its pages get a policy of their own.
DASHBOARD_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def register_security_headers(app):
    from .dashboard import URL_PREFIX

    @app.after_request
    def set_headers(response):
        from flask import request

        dashboard = request.path == URL_PREFIX or request.path.startswith(URL_PREFIX + "/")
        policy = DASHBOARD_CONTENT_SECURITY_POLICY if dashboard else CONTENT_SECURITY_POLICY
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.headers.setdefault(
            "Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"
        )
        if request.is_secure:
            response.headers.setdefault(
                "Strict-Transport-Security", "max-age=31536000; includeSubDomains"
            )
        return response


def register_template_filters(app):
    from .conditions import describe
    from .webhooks import mask_url

    app.add_template_filter(mask_url, "mask_url")
    app.add_template_global(describe, "describe_condition")
