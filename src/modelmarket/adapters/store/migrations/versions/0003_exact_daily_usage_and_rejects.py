"""Exact per-day usage (numerator sums with their divisor, base-unit counts) and the metering reject table.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.add_column(sa.Column("amount_divisor", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("quantity_base", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "metering_rejects",
        sa.Column("log_offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("rejected_at", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metering_rejects")
    with op.batch_alter_table("usage_daily") as batch:
        batch.drop_column("quantity_base")
        batch.drop_column("amount_divisor")
