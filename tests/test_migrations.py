"""Check that the migrations build the schema the models describe, and remove it again."""

import os

import flask_migrate
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pdauto import create_app
from pdauto.extensions import db


@pytest.fixture
def empty_app(tmp_path, redis_server):
    url = os.environ.get("PDAUTO_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'migrations.sqlite3'}")
    app = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "REDIS_URL": redis_server.url}
    )
    with app.app_context():
        db.drop_all()
        _drop_version_table()
        yield app
        db.session.remove()
        db.drop_all()
        _drop_version_table()
        db.engine.dispose()


def _drop_version_table():
    with db.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


def _table_names():
    return set(db.inspect(db.engine).get_table_names()) - {"alembic_version"}


def test_upgrade_matches_models(empty_app):
    flask_migrate.upgrade()

    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == []
    assert _table_names() == set(db.metadata.tables)


def test_downgrade_removes_tables(empty_app):
    flask_migrate.upgrade()
    flask_migrate.downgrade(revision="base")

    assert _table_names() == set()


def test_upgrade_after_downgrade(empty_app):
    flask_migrate.upgrade()
    flask_migrate.downgrade(revision="base")
    flask_migrate.upgrade()

    assert _table_names() == set(db.metadata.tables)
