"""Initial schema (revision ids start with "m": the pre-release ids 0001-0003 are refused by name, never
mistaken for these): accounts, keys, registry, usage (exact base units and amount numerators), rejects, consumer
offsets, audit chain.

Revision ID: m0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "m0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.String(40)
_DEC = sa.String(64)  # exact decimals stored as text (schema.DecimalText)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    op.create_table(
        "models",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("provider_account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("model_name", sa.String(200), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("version_major", sa.Integer, nullable=False),
        sa.Column("version_minor", sa.Integer, nullable=False),
        sa.Column("version_patch", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("manifest_json", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("model_name", "version", name="uq_model_versions_name_version"),
    )
    op.create_table(
        "artifacts",
        sa.Column("version_id", sa.String(40), sa.ForeignKey("model_versions.id"), primary_key=True),
        sa.Column("path", sa.String(500), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "aliases",
        sa.Column("model_name", sa.String(200), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("alias", sa.String(100), primary_key=True),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "usage_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("provider_account_id", sa.String(40), nullable=False),
        sa.Column("unit_kind", sa.String(40), nullable=False),
        sa.Column("quantity_base", sa.BigInteger, nullable=False),
        sa.Column("unit_price", _DEC, nullable=False),
        sa.Column("amount_numerator", _DEC, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("latency_ms", _DEC, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_usage_events_account_day", "usage_events", ["account_id", "day"])
    op.create_index("ix_usage_events_provider_day", "usage_events", ["provider_account_id", "day"])
    op.create_table(
        "usage_daily",
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("unit_kind", sa.String(40), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("quantity_base", sa.BigInteger, nullable=False),
        sa.Column("amount_numerator", _DEC, nullable=False),
    )
    op.create_table(
        "metering_rejects",
        sa.Column("log_offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("rejected_at", _TS, nullable=False),
    )
    op.create_table(
        "consumer_offsets",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("halted_reason", sa.Text, nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("payload_json", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "audit_log",
        "consumer_offsets",
        "metering_rejects",
        "usage_daily",
        "usage_events",
        "aliases",
        "artifacts",
        "model_versions",
        "models",
        "api_keys",
        "accounts",
    ):
        op.drop_table(table)
