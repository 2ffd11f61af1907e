"""Limit leases: the blocks of allowance gateway replicas lease so one limit holds across them.

- ``limit_leases``: per scope (account or key), limit (a daily quota, a grant, a budget, rpm), window (day,
  period, minute) and replica, what the replica was granted and reported used, and when its lease expires.

Revision ID: m0009
Revises: m0008
"""

import sqlalchemy as sa
from alembic import op

revision = "m0009"
down_revision = "m0008"
branch_labels = None
depends_on = None

_FRAC = sa.String(120)  # exact rationals stored as text "n" or "n/d" (schema.FractionText)


def upgrade() -> None:
    op.create_table(
        "limit_leases",
        sa.Column("scope", sa.String(60), primary_key=True),
        sa.Column("limit_name", sa.String(60), primary_key=True),
        sa.Column("window", sa.String(20), primary_key=True),
        sa.Column("replica", sa.String(120), primary_key=True),
        sa.Column("granted", _FRAC, nullable=False),
        sa.Column("used", _FRAC, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_limit_leases_replica", "limit_leases", ["replica"])


def downgrade() -> None:
    op.drop_index("ix_limit_leases_replica", table_name="limit_leases")
    op.drop_table("limit_leases")
