"""Table definitions (SQLAlchemy Core). Migrations under migrations/versions create exactly these."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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


class FractionText(TypeDecorator[Fraction]):
    """Exact rationals stored as text ``n`` or ``n/d`` (a ledger amount in audio minutes is in 1/60ths)."""

    impl = String(120)
    cache_ok = True

    def process_bind_param(self, value: Fraction | None, dialect: Dialect) -> str | None:
        return None if value is None else str(Fraction(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Fraction | None:
        return None if value is None else Fraction(value)


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
    Column("evaluation_json", Text, nullable=True),  # m0005: the gate's benchmark and bias figures
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
    # One row per applied usage event: what metering read from the log, and (from m0003) what rating made of it,
    # written together in one insert (the rated columns are NULL only for an event no rating projector saw).
    Column("event_id", String(64), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("provider_account_id", String(40), nullable=False),
    Column("unit_kind", String(40), nullable=False),
    # Base units (images, tokens, seconds, requests): what is billed. IU = quantity_base / the unit's divisor.
    Column("quantity_base", BigInteger, nullable=False),
    Column("unit_price", DecimalText, nullable=False),
    # Exact: the event's list amount is amount_numerator / the unit's divisor (audio is priced per minute but
    # billed per second, and 1/60 has no exact decimal).
    Column("amount_numerator", DecimalText, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("occurred_at", String(40), nullable=False),
    Column("day", String(10), nullable=False),
    Column("latency_ms", DecimalText, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    # -- rated (m0003) --
    # The invoice period the event lands on; origin_period is the month it happened in (they differ for an
    # adjustment: an event that arrived after its month was finalized).
    Column("period", String(7), nullable=True),
    Column("origin_period", String(7), nullable=True),
    Column("kind", String(20), nullable=True),
    Column("plan_name", String(100), nullable=True),
    Column("plan_version", Integer, nullable=True),
    Column("granted_base", BigInteger, nullable=True),
    Column("amount", FractionText, nullable=True),
    Column("provider_amount", FractionText, nullable=True),
    Column("txn_id", String(64), nullable=True),
    # -- m0004 --
    # Of quantity_base, the base units that were output (tokens generated): priced at the output price.
    Column("quantity_out", BigInteger, nullable=False, server_default="0"),
    # The pipeline call a step's event belongs to (a Resonance Node call), else NULL.
    Column("pipeline_call_id", String(64), nullable=True),
    # -- m0011 --
    # The dynamic price factor stamped on the event (a price replay re-rates tiers and token prices with it);
    # NULL on rows recorded before m0011, until a rebuild writes them again.
    Column("price_factor", DecimalText, nullable=True),
    # Only what the frequent queries need (each index costs every insert of the hot path 1-2 us, measured): dedup
    # by event id (the primary key); dynamic pricing's calls per model and time; invoices and limits per account
    # and period (and the accounts billed per period). Provider statements (a payout run, monthly) scan.
    Index("ix_usage_events_model_time", "model_name", "occurred_at"),
    Index("ix_usage_events_account_period", "account_id", "period"),
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
    # Keyed by partition and offset (offsets repeat across partitions).
    Column("log_partition", Integer, primary_key=True, autoincrement=False),
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


# -- the economy (m0003) ---------------------------------------------------------------------------------------

plan_versions = Table(
    "plan_versions",
    metadata,
    Column("plan_name", String(100), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("created_at", String(40), nullable=False),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    # History, never edited: the plan in force for an account at time T is the row with the latest
    # effective_at <= T (ties: the highest seq).
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("account_id", String(40), nullable=False),
    Column("plan_name", String(100), nullable=False),
    Column("plan_version", Integer, nullable=False),
    Column("effective_at", String(40), nullable=False),
    Column("created_at", String(40), nullable=False),
    Index("ix_subscriptions_account", "account_id", "effective_at"),
)

account_limits = Table(
    "account_limits",
    metadata,
    Column("account_id", String(40), primary_key=True),
    # '' for the account-wide limits, else the API key id they apply to.
    Column("key_id", String(40), primary_key=True),
    Column("rpm", Integer, nullable=True),
    Column("iu_per_day_json", Text, nullable=False),
    Column("budget", DecimalText, nullable=True),
    Column("updated_at", String(40), nullable=False),
)

price_records = Table(
    "price_records",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("effective_at", String(40), nullable=False),
    # None: the version's own manifest price; else the operator's list price per IU.
    Column("list_price", DecimalText, nullable=True),
    Column("factor", DecimalText, nullable=False),
    Column("source", String(20), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
)

dynamic_pricing = Table(
    "dynamic_pricing",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("min_factor", DecimalText, nullable=False),
    Column("max_factor", DecimalText, nullable=False),
    Column("enabled", Integer, nullable=False),
    Column("updated_at", String(40), nullable=False),
)

rating_counters = Table(
    "rating_counters",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("period", String(7), primary_key=True),
    # 'sub:<seq>' (a subscription's grant or included IU) or 'model:<name>' (a model's tiers).
    Column("scope", String(220), primary_key=True),
    Column("unit_kind", String(40), primary_key=True),
    Column("quantity_base", BigInteger, nullable=False),
)

ledger_txns = Table(
    "ledger_txns",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("period", String(7), nullable=False),
    Column("account_id", String(40), nullable=False),
    Column("memo", String(300), nullable=False),
    Column("log_offset", BigInteger, nullable=True),
    Column("created_at", String(40), nullable=False),
    Index("ix_ledger_txns_account", "account_id", "period"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("txn_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ledger_account", String(120), nullable=False),
    Column("currency", String(3), nullable=False),
    # Exact, signed: a debit is positive, a credit negative; a transaction's entries sum to zero.
    Column("amount", FractionText, nullable=False),
    Index("ix_ledger_entries_account", "ledger_account"),
)

invoices = Table(
    "invoices",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("period", String(7), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(20), nullable=False),
    Column("lines_json", Text, nullable=False),
    Column("total", DecimalText, nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("finalized_at", String(40), nullable=True),
    # The metering offset when it was finalized: an event of its period read after it is an adjustment.
    Column("finalized_offset", BigInteger, nullable=True),
    Column("voided_at", String(40), nullable=True),
    Column("void_reason", Text, nullable=True),
    UniqueConstraint("account_id", "period", "currency", name="uq_invoices_account_period_currency"),
)

economy_settings = Table(
    "economy_settings",
    metadata,
    # Facts the rating of every event depends on, fixed by the first rating (the provider's share): every process
    # that rates (the metering child, a CLI catching up, a rebuild) reads them here, not from its environment.
    Column("name", String(60), primary_key=True),
    Column("value", String(200), nullable=False),
)

payouts = Table(
    "payouts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("provider_account_id", String(40), nullable=False),
    Column("period", String(7), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", DecimalText, nullable=False),
    Column("txn_id", String(64), nullable=False),
    Column("created_at", String(40), nullable=False),
    # 1 for a period's first payout; a later run pays what came in since (late usage) as seq 2, 3, ...
    Column("seq", Integer, nullable=False),
    UniqueConstraint("provider_account_id", "period", "currency", "seq", name="uq_payouts_provider_period_seq"),
)


# -- the polyglot gateway (m0004) -------------------------------------------------------------------------------

providers = Table(
    "providers",
    metadata,
    # An upstream server a package may publish a model of. Its API key is never stored: only the name of the
    # environment variable the gateway reads it from.
    Column("name", String(63), primary_key=True),
    Column("base_url", String(500), nullable=False),
    Column("protocol", String(20), nullable=False),  # "openai" or "oip"
    Column("api_key_env", String(100), nullable=True),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

routes = Table(
    "routes",
    metadata,
    # A model name that resolves to weighted targets with fallbacks: the applied spec as canonical JSON.
    Column("name", String(63), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", String(40), nullable=False),
)


# -- the publish gate (m0005) -----------------------------------------------------------------------------------

submissions = Table(
    "submissions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("provider_account_id", String(40), nullable=False),
    Column("submitted_by", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("manifest_json", Text, nullable=False),
    Column("artifacts_json", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("decided_by", String(200), nullable=True),
    Column("decision_reason", Text, nullable=True),
    Column("version_id", String(40), nullable=True),
    Index("ix_submissions_ref", "model_name", "version", "created_at"),
    Index("ix_submissions_provider", "provider_account_id", "status"),
)

submission_stages = Table(
    "submission_stages",
    metadata,
    Column("submission_id", String(40), ForeignKey("submissions.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("stage", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("started_at", String(40), nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    Column("summary", Text, nullable=False),
    Column("report_json", Text, nullable=False),
)


# -- verifiable audit (m0007) -----------------------------------------------------------------------------------

# RFC 6962 Merkle trees over the audit chain ("audit") and the applied usage events ("usage"): see audit/trees.py.
merkle_leaves = Table(
    "merkle_leaves",
    metadata,
    Column("tree", String(16), primary_key=True),
    Column("leaf_index", BigInteger, primary_key=True, autoincrement=False),
    # A usage event id, or an audit record's seq as text.
    Column("ref", String(64), nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Index("ux_merkle_leaves_ref", "tree", "ref", unique=True),
)

merkle_nodes = Table(
    "merkle_nodes",
    metadata,
    # The heads of perfect subtrees at every 4th level (16, 256, ... leaves), so a proof reads O(log n) rows.
    Column("tree", String(16), primary_key=True),
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("node_index", BigInteger, primary_key=True, autoincrement=False),
    Column("node_hash", LargeBinary(32), nullable=False),
)

merkle_heads = Table(
    "merkle_heads",
    metadata,
    Column("tree", String(16), primary_key=True),
    Column("tree_size", BigInteger, nullable=False),
    # The heads of the perfect subtrees along the right edge, 32 bytes each (audit.merkle.Frontier).
    Column("frontier", LargeBinary, nullable=False),
    # The latest signed checkpoint (NULL before the first).
    Column("checkpoint_size", BigInteger, nullable=True),
    Column("checkpoint_root", LargeBinary(32), nullable=True),
    Column("checkpoint_signed_at", String(40), nullable=True),
    Column("checkpoint_key_id", String(16), nullable=True),
    Column("checkpoint_signature", LargeBinary(64), nullable=True),
)

merkle_checkpoints = Table(
    "merkle_checkpoints",
    metadata,
    # The history: every audit checkpoint, a usage checkpoint at most every MODELMARKET_USAGE_CHECKPOINT_S.
    Column("tree", String(16), primary_key=True),
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("signed_at", String(40), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)


# -- privacy (m0006) --------------------------------------------------------------------------------------------

key_privacy = Table(
    "key_privacy",
    metadata,
    # The entities (core.pii names, comma-separated, sorted) redacted from every call made with the key.
    Column("key_id", String(40), ForeignKey("api_keys.id"), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("entities", Text, nullable=False),
    Column("updated_at", String(40), nullable=False),
)

capture_optins = Table(
    "capture_optins",
    metadata,
    # An account listed here opted in to keeping its calls' inputs and outputs (redacted of every entity).
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("updated_at", String(40), nullable=False),
)

captured_calls = Table(
    "captured_calls",
    metadata,
    # A kept call: redacted of every entity and cut to MODELMARKET_CAPTURE_MAX_CHARS before it is written; an
    # account keeps its MODELMARKET_CAPTURE_MAX_CALLS latest.
    Column("id", String(64), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("input_text", Text, nullable=False),
    Column("output_text", Text, nullable=False),
    Index("ix_captured_calls_account", "account_id", "created_at"),
)


# -- dashboard sessions (m0008) ---------------------------------------------------------------------------------

dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    # The SHA-256 (hex) of the secret in the browser's cookie; never the secret, never the API key.
    Column("id", String(64), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    # Fixed-width UTC times (accounts.sessions.stamp): compared as text.
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40), nullable=False),
    Index("ix_dashboard_sessions_account", "account_id", "created_at"),
    Index("ix_dashboard_sessions_expires", "expires_at"),
)


# -- limit leases (m0009) ---------------------------------------------------------------------------------------

limit_leases = Table(
    "limit_leases",
    metadata,
    # One replica's block of one limit's allowance in one window (billing.ports.StoredLease); replica '' is the
    # window's baseline (usage stored before its first lease).
    Column("scope", String(60), primary_key=True),
    Column("limit_name", String(60), primary_key=True),
    Column("window", String(20), primary_key=True),
    Column("replica", String(120), primary_key=True),
    Column("granted", FractionText(), nullable=False),
    Column("used", FractionText(), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_limit_leases_replica", "replica"),
)


# -- the lab (m0012) ----------------------------------------------------------------------------------------------

call_feedback = Table(
    "call_feedback",
    metadata,
    # A consumer's feedback on one of its billed calls (lab.feedback): one row per call, named by its usage event.
    Column("event_id", String(64), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("score", Integer, nullable=False),
    Column("label", String(200), nullable=True),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    Index("ix_call_feedback_model_version", "model_name", "version"),
)

experiments = Table(
    "experiments",
    metadata,
    # An experiment (lab.experiments): its variants as JSON [{name, version, weight}], the first the control.
    Column("name", String(63), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("variants", Text, nullable=False),
    Column("metric", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("started_at", String(40), nullable=False),
    Column("stopped_at", String(40), nullable=True),
    Column("promoted", String(16), nullable=True),
)

experiment_calls = Table(
    "experiment_calls",
    metadata,
    # A call an experiment assigned, recorded by the gateway off its hot path (gateway/experiments.py).
    Column("id", String(64), primary_key=True),
    Column("experiment", String(63), nullable=False),
    Column("variant", String(16), nullable=False),
    Column("version", String(100), nullable=False),
    Column("account_id", String(40), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("latency_us", BigInteger, nullable=False),
    Column("prediction", String(200), nullable=True),
    Column("event_id", String(64), nullable=True),
    Column("at", String(40), nullable=False),
    Index("ix_experiment_calls_experiment", "experiment", "at"),
)

bakeoffs = Table(
    "bakeoffs",
    metadata,
    # A bake-off's leaderboard (lab.bakeoff), as JSON.
    Column("id", String(40), primary_key=True),
    Column("created_at", String(40), nullable=False),
    Column("doc", Text, nullable=False),
)

bakeoff_models = Table(
    "bakeoff_models",
    metadata,
    Column("bakeoff_id", String(40), ForeignKey("bakeoffs.id"), primary_key=True),
    Column("model_name", String(200), primary_key=True),
    Index("ix_bakeoff_models_model", "model_name"),
)
