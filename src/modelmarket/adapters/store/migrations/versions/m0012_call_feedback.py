"""Feedback on calls (``POST /api/feedback``): one row per call, named by its usage event's id, with the model
version that served it so figures are summed per version without a join.

Revision ID: m0012
Revises: m0011
"""

import sqlalchemy as sa
from alembic import op

revision = "m0012"
down_revision = "m0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_feedback",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_call_feedback_model_version", "call_feedback", ["model_name", "version"])


def downgrade() -> None:
    op.drop_index("ix_call_feedback_model_version", "call_feedback")
    op.drop_table("call_feedback")
