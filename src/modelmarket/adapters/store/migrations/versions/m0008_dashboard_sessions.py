"""Dashboard sessions: a sign-in with an API key, held by the browser as a random secret in a cookie.

- ``dashboard_sessions``: the secret's SHA-256, the account and key it was made with, the CSRF token of its forms,
  when it was made and when it expires.

Revision ID: m0008
Revises: m0007
"""

import sqlalchemy as sa
from alembic import op

revision = "m0008"
down_revision = "m0007"
branch_labels = None
depends_on = None

_TS = sa.String(40)


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.create_index("ix_dashboard_sessions_account", "dashboard_sessions", ["account_id", "created_at"])
    op.create_index("ix_dashboard_sessions_expires", "dashboard_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_sessions_expires", table_name="dashboard_sessions")
    op.drop_index("ix_dashboard_sessions_account", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
