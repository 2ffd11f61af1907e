"""The polyglot gateway: upstream providers, routes, and two facts of a usage event the store now keeps.

- ``usage_events.quantity_out``: of ``quantity_base``, the base units that were output (tokens generated), so
  invoices show input and output tokens apart at their own prices. Rows written before are all input (0).
- ``usage_events.pipeline_call_id``: the id of the pipeline call a step's event belongs to (NULL otherwise).
- ``providers``: OpenAI-compatible (or OIP) servers a package may publish a model of. The API key is never
  stored: only the name of the environment variable that holds it.
- ``routes``: a model name that resolves to weighted targets with fallbacks (the YAML as applied, canonical
  JSON, its digest and a revision counting changes).

Revision ID: m0004
Revises: m0003
"""

import sqlalchemy as sa
from alembic import op

revision = "m0004"
down_revision = "m0003"
branch_labels = None
depends_on = None

_TS = sa.String(40)


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("quantity_out", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("usage_events", sa.Column("pipeline_call_id", sa.String(64), nullable=True))
    op.create_table(
        "providers",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("base_url", sa.String(500), nullable=False),
        sa.Column("protocol", sa.String(20), nullable=False),
        sa.Column("api_key_env", sa.String(100), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "routes",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("routes")
    op.drop_table("providers")
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("pipeline_call_id")
        batch.drop_column("quantity_out")
