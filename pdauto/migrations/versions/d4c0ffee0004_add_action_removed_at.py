"""Add removed_at to actions, for steps removed in the builder.

A removed step keeps its row, because its deliveries refer to it.

Revision ID: d4c0ffee0004
Revises: c3c0ffee0003
"""

import sqlalchemy as sa
from alembic import op

revision = "d4c0ffee0004"
down_revision = "c3c0ffee0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("actions") as batch_op:
        batch_op.add_column(sa.Column("removed_at", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("actions") as batch_op:
        batch_op.drop_column("removed_at")
