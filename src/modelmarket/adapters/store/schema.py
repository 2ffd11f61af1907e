"""Table definitions (SQLAlchemy Core). Migrations under migrations/versions create exactly these."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class DecimalText(TypeDecorator[Decimal]):
    """Exact decimals stored as text, identical on SQLite and PostgreSQL (no float round-trips)."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("created_at", String(40), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("revoked_at", String(40), nullable=True),
)

models = Table(
    "models",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("provider_account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("created_at", String(40), nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("model_name", String(200), ForeignKey("models.name"), nullable=False),
    Column("version", String(100), nullable=False),
    Column("version_major", Integer, nullable=False),
    Column("version_minor", Integer, nullable=False),
    Column("version_patch", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("manifest_json", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    UniqueConstraint("model_name", "version", name="uq_model_versions_name_version"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("version_id", String(40), ForeignKey("model_versions.id"), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model_name", String(200), ForeignKey("models.name"), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("version", String(100), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

usage_events = Table(
    "usage_events",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("provider_account_id", String(40), nullable=False),
    Column("unit_kind", String(40), nullable=False),
    # Base units (images, tokens, seconds, requests): what is billed. IU = quantity_base / the unit's divisor.
    Column("quantity_base", BigInteger, nullable=False),
    Column("unit_price", DecimalText, nullable=False),
    # Exact: the event's amount is amount_numerator / the unit's divisor (audio is priced per minute but billed
    # per second, and 1/60 has no exact decimal).
    Column("amount_numerator", DecimalText, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("occurred_at", String(40), nullable=False),
    Column("day", String(10), nullable=False),
    Column("latency_ms", DecimalText, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Index("ix_usage_events_account_day", "account_id", "day"),
    Index("ix_usage_events_provider_day", "provider_account_id", "day"),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("model_name", String(200), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("unit_kind", String(40), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("events", BigInteger, nullable=False),
    Column("quantity_base", BigInteger, nullable=False),
    Column("amount_numerator", DecimalText, nullable=False),
)

metering_rejects = Table(
    "metering_rejects",
    metadata,
    # A log record the consumer could not read as a usage event: kept, with why, instead of blocking the log.
    Column("log_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("rejected_at", String(40), nullable=False),
)

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("consumer", String(100), primary_key=True),
    Column("log_offset", BigInteger, nullable=False),
    # Set when the consumer met a broken invariant and stopped; cleared by `modelmarket meter --resume`.
    Column("halted_reason", Text, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("occurred_at", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(100), nullable=False),
    Column("subject", String(500), nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
