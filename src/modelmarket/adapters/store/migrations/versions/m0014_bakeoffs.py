"""Bake-offs (``modelmarket lab bakeoff``): each leaderboard as JSON, and the models that took part in it (a model
page shows the bake-offs of its model).

Revision ID: m0014
Revises: m0013
"""

import sqlalchemy as sa
from alembic import op

revision = "m0014"
down_revision = "m0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bakeoffs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_table(
        "bakeoff_models",
        sa.Column("bakeoff_id", sa.String(40), sa.ForeignKey("bakeoffs.id"), primary_key=True),
        sa.Column("model_name", sa.String(200), primary_key=True),
    )
    op.create_index("ix_bakeoff_models_model", "bakeoff_models", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_bakeoff_models_model", "bakeoff_models")
    op.drop_table("bakeoff_models")
    op.drop_table("bakeoffs")
