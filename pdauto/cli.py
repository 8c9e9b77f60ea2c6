"""Flask CLI commands: users, the worker and the sweep."""

import logging

import click
from flask import current_app
from flask.cli import with_appcontext

from .extensions import db
from .models import ROLES, Account, User


def register(app):
    app.cli.add_command(create_account)
    app.cli.add_command(reset_password)
    app.cli.add_command(create_user)
    app.cli.add_command(worker)
    app.cli.add_command(sweep)


@click.command("create-account")
@with_appcontext
@click.argument("name")
def create_account(name):
    """Create an account with no users yet."""
    name = name.strip()
    if not name:
        raise click.ClickException("the account name must not be empty")
    if db.session.scalar(db.select(Account).where(Account.name == name)):
        raise click.ClickException(f"an account named {name!r} exists already")
    db.session.add(Account(name=name))
    db.session.commit()
    click.echo(f"created account {name!r}")


@click.command("reset-password")
@with_appcontext
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def reset_password(email, password):
    """Set a new password for a user, for example one who forgot theirs."""
    email = email.strip().lower()
    user = db.session.scalar(db.select(User).where(User.email == email))
    if user is None:
        raise click.ClickException(f"no user with the email {email}")
    if len(password) < 8:
        raise click.ClickException("the password must have at least 8 characters")
    user.set_password(password)
    db.session.commit()
    click.echo(f"new password set for {email}")


@click.command("create-user")
@with_appcontext
@click.argument("email")
@click.option("--password", required=True, help="The password to log in with.")
@click.option("--account", "account_name", required=True, help="Account name; created if new.")
@click.option("--role", type=click.Choice(ROLES), default="manager", show_default=True)
@click.option(
    "--if-missing",
    is_flag=True,
    help="If a user with this email exists, leave it unchanged and exit with status 0.",
)
def create_user(email, password, account_name, role, if_missing):
    """Create a user, and the account if it is new."""
    email = email.strip().lower()
    if db.session.scalar(db.select(User).where(User.email == email)):
        if if_missing:
            click.echo(f"user {email} already exists, left unchanged")
            return
        raise click.ClickException(f"a user with the email {email} already exists")
    if len(password) < 8:
        raise click.ClickException("the password must have at least 8 characters")

    account = db.session.scalar(db.select(Account).where(Account.name == account_name))
    if account is None:
        account = Account(name=account_name)
        db.session.add(account)
    user = User(account=account, email=email, role=role)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    click.echo(f"created {role} {email} in account {account_name!r}")


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="Stop once the queues are empty.")
@click.option("--no-sweep", is_flag=True, help="Do not run the periodic sweep here.")
@click.option("--name", default=None, help="Worker name shown on the RQ dashboard.")
def worker(burst, no_sweep, name):
    """Run an RQ worker with its scheduler, inside the app context."""
    from .worker import DispatchListener, SweepThread, make_worker

    # pdauto's own records go through the handler that create_app set up; this
    # adds one for RQ's records and anything else that reaches the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    pdauto_logger = logging.getLogger("pdauto")
    if any(getattr(handler, "pdauto_handler", False) for handler in pdauto_logger.handlers):
        pdauto_logger.propagate = False
    app = current_app._get_current_object()
    sweep_thread = None
    if not no_sweep and not burst:
        sweep_thread = SweepThread(app)
        sweep_thread.start()
    listener = None
    if not burst:
        listener = DispatchListener(app)
        listener.start()
    rq_worker = make_worker(app, name=name)
    rq_worker.listener = listener
    try:
        rq_worker.work(burst=burst, with_scheduler=True)
    finally:
        if sweep_thread is not None:
            sweep_thread.stop()
        if listener is not None:
            listener.stop()
            # The batch in hand stops sending once its budget is spent, and the last
            # request then ends within its own timeout.
            config = app.config
            listener.join(
                timeout=config["DISPATCH_SEND_BUDGET_SECONDS"]
                + config["DELIVERY_TIMEOUT_SECONDS"]
                + 15
            )


@click.command("sweep")
@with_appcontext
def sweep():
    """Queue events and deliveries that were missed, once."""
    from .worker import run_sweep_once

    counts = run_sweep_once(current_app._get_current_object())
    click.echo("another sweep is running" if counts is None else f"queued {counts}")
