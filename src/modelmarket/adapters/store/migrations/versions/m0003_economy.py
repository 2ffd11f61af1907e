"""The economy: plan versions and subscriptions, account and key limits, price records and dynamic pricing,
rated events and their counters, the double-entry ledger, invoices with a lifecycle, and payouts.

Every table is new; nothing existing changes. Rated events, counters, ledger rows of usage and draft invoices are
derived from the event log and can be rebuilt (``modelmarket billing rebuild``).

Revision ID: m0003
Revises: m0002
"""

import sqlalchemy as sa
from alembic import op

revision = "m0003"
down_revision = "m0002"
branch_labels = None
depends_on = None

_TS = sa.String(40)
_DEC = sa.String(64)  # exact decimals stored as text (schema.DecimalText)
_FRAC = sa.String(120)  # exact rationals stored as text "n" or "n/d" (schema.FractionText)
_TABLES = (
    "payouts",
    "invoices",
    "ledger_entries",
    "ledger_txns",
    "rating_counters",
    "rated_events",
    "dynamic_pricing",
    "price_records",
    "account_limits",
    "subscriptions",
    "plan_versions",
)


def upgrade() -> None:
    # Dynamic pricing reads each model's recent calls.
    op.create_index("ix_usage_events_model_time", "usage_events", ["model_name", "occurred_at"])
    op.create_table(
        "plan_versions",
        sa.Column("plan_name", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "subscriptions",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("plan_name", sa.String(100), nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=False),
        sa.Column("effective_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_subscriptions_account", "subscriptions", ["account_id", "effective_at"])
    op.create_table(
        "account_limits",
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("iu_per_day_json", sa.Text, nullable=False),
        sa.Column("budget", _DEC, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "price_records",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("effective_at", _TS, nullable=False),
        sa.Column("list_price", _DEC, nullable=True),
        sa.Column("factor", _DEC, nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "dynamic_pricing",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("min_factor", _DEC, nullable=False),
        sa.Column("max_factor", _DEC, nullable=False),
        sa.Column("enabled", sa.Integer, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "rated_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("provider_account_id", sa.String(40), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("unit_kind", sa.String(40), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("origin_period", sa.String(7), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("plan_name", sa.String(100), nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=False),
        sa.Column("quantity_base", sa.BigInteger, nullable=False),
        sa.Column("granted_base", sa.BigInteger, nullable=False),
        sa.Column("amount", _FRAC, nullable=False),
        sa.Column("provider_amount", _FRAC, nullable=False),
        sa.Column("txn_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_rated_events_txn", "rated_events", ["txn_id"])
    op.create_index("ix_rated_events_account_period", "rated_events", ["account_id", "period"])
    op.create_index("ix_rated_events_provider_period", "rated_events", ["provider_account_id", "origin_period"])
    op.create_table(
        "rating_counters",
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("scope", sa.String(220), primary_key=True),
        sa.Column("unit_kind", sa.String(40), primary_key=True),
        sa.Column("quantity_base", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ledger_txns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("memo", sa.String(300), nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_ledger_txns_account", "ledger_txns", ["account_id", "period"])
    op.create_table(
        "ledger_entries",
        sa.Column("txn_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ledger_account", sa.String(120), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", _FRAC, nullable=False),
    )
    op.create_index("ix_ledger_entries_account", "ledger_entries", ["ledger_account"])
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("lines_json", sa.Text, nullable=False),
        sa.Column("total", _DEC, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("finalized_at", _TS, nullable=True),
        sa.Column("finalized_offset", sa.BigInteger, nullable=True),
        sa.Column("voided_at", _TS, nullable=True),
        sa.Column("void_reason", sa.Text, nullable=True),
        sa.UniqueConstraint("account_id", "period", "currency", name="uq_invoices_account_period_currency"),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("provider_account_id", sa.String(40), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", _DEC, nullable=False),
        sa.Column("txn_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.UniqueConstraint("provider_account_id", "period", "currency", "seq", name="uq_payouts_provider_period_seq"),
    )


def downgrade() -> None:
    for name in _TABLES:
        op.drop_table(name)
    op.drop_index("ix_usage_events_model_time", "usage_events")
