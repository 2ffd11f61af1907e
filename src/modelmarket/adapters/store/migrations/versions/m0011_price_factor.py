"""A usage event's dynamic price factor kept with its row, so a price replay (``modelmarket lab price-replay``) can
re-rate a tiered or token-priced event from the store alone.

Rows recorded before this revision keep NULL (their factor is only in the log): ``modelmarket billing rebuild``
writes every row again with it.

Revision ID: m0011
Revises: m0010
"""

import sqlalchemy as sa
from alembic import op

revision = "m0011"
down_revision = "m0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("price_factor", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("price_factor")
