"""Add the record snapshot to events, for trigger conditions.

Revision ID: b2c0ffee0002
Revises: a1c0ffee0001
"""

import sqlalchemy as sa
from alembic import op

revision = "b2c0ffee0002"
down_revision = "a1c0ffee0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("events") as batch_op:
        # Events written before this revision carry no snapshot.
        batch_op.add_column(sa.Column("record", sa.JSON(), nullable=False, server_default="{}"))


def downgrade():
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("record")
