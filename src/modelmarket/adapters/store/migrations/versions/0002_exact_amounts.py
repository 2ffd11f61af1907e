"""Exact amounts for units whose divisor has no exact decimal: usage_events.amount_divisor and quantity_base.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("amount_divisor", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("quantity_base", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("quantity_base")
        batch.drop_column("amount_divisor")
