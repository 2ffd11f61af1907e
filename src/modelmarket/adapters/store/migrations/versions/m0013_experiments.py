"""Experiments (``modelmarket lab experiment``) and the calls they assigned, recorded by the gateways.

Revision ID: m0013
Revises: m0012
"""

import sqlalchemy as sa
from alembic import op

revision = "m0013"
down_revision = "m0012"
branch_labels = None
depends_on = None

_TS = sa.String(40)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("variants", sa.Text, nullable=False),
        sa.Column("metric", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("stopped_at", _TS, nullable=True),
        sa.Column("promoted", sa.String(16), nullable=True),
    )
    op.create_table(
        "experiment_calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("experiment", sa.String(63), nullable=False),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("latency_us", sa.BigInteger, nullable=False),
        sa.Column("prediction", sa.String(200), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_index("ix_experiment_calls_experiment", "experiment_calls", ["experiment", "at"])


def downgrade() -> None:
    op.drop_index("ix_experiment_calls_experiment", "experiment_calls")
    op.drop_table("experiment_calls")
    op.drop_table("experiments")
