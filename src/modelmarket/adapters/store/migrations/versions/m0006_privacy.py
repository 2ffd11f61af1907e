"""Privacy: per-key redaction policies, capture opt-ins and the calls kept for accounts that opted in.

- ``key_privacy``: the entities redacted from every call made with a key.
- ``capture_optins``: the accounts that keep their calls' inputs and outputs.
- ``captured_calls``: those calls, redacted of every entity and bounded in size; each account keeps its latest.

Revision ID: m0006
Revises: m0005
"""

import sqlalchemy as sa
from alembic import op

revision = "m0006"
down_revision = "m0005"
branch_labels = None
depends_on = None

_TS = sa.String(40)


def upgrade() -> None:
    op.create_table(
        "key_privacy",
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("entities", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "capture_optins",
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "captured_calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("input_text", sa.Text, nullable=False),
        sa.Column("output_text", sa.Text, nullable=False),
    )
    op.create_index("ix_captured_calls_account", "captured_calls", ["account_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_captured_calls_account", table_name="captured_calls")
    op.drop_table("captured_calls")
    op.drop_table("capture_optins")
    op.drop_table("key_privacy")
