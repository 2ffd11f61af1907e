"""The economy: plan versions and subscriptions, account and key limits, price records and dynamic pricing,
rated events and their counters, the double-entry ledger, invoices with a lifecycle, and payouts.

A rated event is its usage event's row: ``usage_events`` gains the rated columns (NULL until the event is rated,
so rows written before this revision are rated by ``modelmarket billing rebuild``), and the metering consumer
writes each event once, with its rating. Its secondary indexes become the ones the frequent queries read (each
one costs every insert): the two of 0001 (per account and day, per provider and day) had no reader and go; per
model and time (dynamic pricing) and per account and period (invoices, limits) come. Every other table is new.
Rated events, counters, ledger rows of usage and draft invoices are derived from the event log and can be
rebuilt (``modelmarket billing rebuild``).

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
    "economy_settings",
    "payouts",
    "invoices",
    "ledger_entries",
    "ledger_txns",
    "rating_counters",
    "dynamic_pricing",
    "price_records",
    "account_limits",
    "subscriptions",
    "plan_versions",
)


_RATED_COLUMNS = (
    ("period", sa.String(7)),
    ("origin_period", sa.String(7)),
    ("kind", sa.String(20)),
    ("plan_name", sa.String(100)),
    ("plan_version", sa.Integer),
    ("granted_base", sa.BigInteger),
    ("amount", _FRAC),
    ("provider_amount", _FRAC),
    ("txn_id", sa.String(64)),
)
_NEW_INDEXES = (
    ("ix_usage_events_model_time", ["model_name", "occurred_at"]),  # dynamic pricing: a model's recent calls
    ("ix_usage_events_account_period", ["account_id", "period"]),  # invoices and limits: an account's period
)
_UNREAD_INDEXES = (
    ("ix_usage_events_account_day", ["account_id", "day"]),
    ("ix_usage_events_provider_day", ["provider_account_id", "day"]),
)


def upgrade() -> None:
    op.create_table(
        "economy_settings",
        sa.Column("name", sa.String(60), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    for name, _ in _UNREAD_INDEXES:
        op.drop_index(name, "usage_events")
    for name, type_ in _RATED_COLUMNS:
        op.add_column("usage_events", sa.Column(name, type_, nullable=True))
    for name, columns in _NEW_INDEXES:
        op.create_index(name, "usage_events", columns)
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
    for name, _ in _NEW_INDEXES:
        op.drop_index(name, "usage_events")
    for name, _ in _RATED_COLUMNS:
        op.drop_column("usage_events", name)
    for name, columns in _UNREAD_INDEXES:
        op.create_index(name, "usage_events", columns)
