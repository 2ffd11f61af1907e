"""One settings model. Every field is read from the environment with the prefix ``MODELMARKET_``."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

HOME_ID = "{home_id}"
"""Placeholder in `database_url`, `bus_namespace` and `blob_url`: replaced by `home_id(home)`, so one set of
engines (a PostgreSQL server, a NATS server, an S3 bucket) carries several platforms, one per home."""


def home_id(home: Path) -> str:
    """A short, stable name of a home (its resolved path): `mm_` and 12 hex digits of its SHA-256."""
    return "mm_" + hashlib.sha256(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:12]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELMARKET_", extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _per_home(cls, data: Any) -> Any:
        """Replace `{home_id}` in the engines' addresses by this home's id (`home_id`)."""
        if not isinstance(data, dict):
            return data
        templated = [k for k in ("database_url", "bus_namespace", "blob_url") if HOME_ID in str(data.get(k) or "")]
        if templated:
            data = dict(data)
            ident = home_id(Path(data.get("home") or ".modelmarket"))
            for key in templated:
                data[key] = str(data[key]).replace(HOME_ID, ident)
            data["database_per_home"] = "database_url" in templated
        return data

    home: Path = Field(
        default=Path(".modelmarket"),
        description="State directory: the SQLite database, the blob store and the event log live here.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store. Default: SQLite (WAL) at HOME/modelmarket.db. "
        "PostgreSQL: postgresql+psycopg://user@host:port/db.",
    )
    host: str = Field(default="127.0.0.1", description="Address the gateway binds to.")
    port: int = Field(default=8000, description="Port the gateway binds to (0 picks a free one).")
    gateway_id: str = Field(
        default="gateway-1", description="This gateway instance's name; the `source` of its usage events."
    )
    event_log_sync: str = Field(
        default="normal",
        description="SQLite synchronous mode of the embedded event log: 'full' fsyncs every group commit, "
        "'normal' (default) survives a process crash and fsyncs at WAL checkpoints.",
    )
    event_batch_max: int = Field(default=512, description="Most usage events written in one group commit.")
    event_queue_max: int = Field(default=10_000, description="Bound on usage events waiting for their group commit.")
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, description="Largest inference request body the gateway accepts."
    )
    runner_start_timeout_s: float = Field(
        default=60.0, description="How long the supervisor waits for a runner to become ready."
    )
    runner_request_timeout_s: float = Field(
        default=60.0, description="How long the gateway waits for a runner's answer to one request."
    )
    runner_pool_size: int = Field(
        default=64, description="Most pooled connections the gateway keeps open to one runner."
    )
    runner_max_restarts: int = Field(
        default=5, description="Restarts the supervisor attempts for a dying runner before giving up."
    )
    sandbox_default: str = Field(
        default="bwrap",
        description="Sandbox profile for provider code (runtimes python, sklearn) whose package declares none: "
        "process, bwrap or gvisor.",
    )
    sandbox_minimum: str = Field(
        default="bwrap",
        description="Least confined profile provider code may run under, whatever its package declares "
        "(process lets a model read the disk and reach the network: only lower this for code you trust).",
    )
    sandbox_trusted: str = Field(
        default="process",
        description="Profile of the platform's own runtimes (onnx, vader, llama-cpp, ...) when a package "
        "declares none.",
    )
    inprocess_runtimes: str = Field(
        default="",
        description="Comma-separated runtimes the operator lets run inside the gateway process (the cheapest hop, "
        "no isolation): e.g. 'onnx'. Never applies to provider code.",
    )
    sandbox_memory_mb: int = Field(
        default=2048, ge=16, description="A runner's memory limit when its package sets none."
    )
    sandbox_max_memory_mb: int = Field(default=16384, ge=16, description="Most memory a package may ask for.")
    sandbox_max_pids: int = Field(default=4096, ge=1, description="Most processes a package may ask for.")
    sandbox_max_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest per-call timeout a package may ask for (sandbox.timeout_s)."
    )
    sandbox_pids: int = Field(default=256, ge=1, description="A runner's process limit when its package sets none.")
    sandbox_cpus: float | None = Field(
        default=None, gt=0, description="A runner's CPU quota when its package sets none."
    )
    replica_idle_s: float = Field(
        default=60.0, gt=0, description="How long a replica above its version's minimum may sit idle before it stops."
    )
    replica_scale_queue: int = Field(
        default=2,
        ge=1,
        description="Calls waiting per replica that make the supervisor start another (up to the version's max).",
    )
    cache_refresh_s: float = Field(
        default=2.0,
        description="How often the gateway reloads its keys, catalogue, plans, limits and prices from the store.",
    )
    metering_poll_s: float = Field(
        default=0.1, description="How often the metering consumer reads new usage events from the log."
    )
    provider_share: Decimal = Field(
        default=Decimal("0.80"),
        description="Provider's share of billed revenue (the platform keeps the rest).",
    )
    default_plan: str | None = Field(
        default=None,
        description="Plan a new consumer account is subscribed to (none: billed as payg, list prices).",
    )
    invoice_grace_s: float = Field(
        default=3 * 86_400.0,
        ge=0,
        description="How long after a month ends its draft invoices wait for late events before they are finalized.",
    )
    pricing_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the metering consumer recomputes dynamic prices and finalizes invoices that are due.",
    )
    idempotency_ttl_s: float = Field(
        default=86_400.0,
        description="How long the answer to a call with an Idempotency-Key is kept for a retry with that key.",
    )
    idempotency_max_answer_bytes: int = Field(
        default=1024 * 1024,
        description="Largest answer kept for an Idempotency-Key retry (a larger one is served once; a retry gets 409).",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        gt=0,
        description="Largest request head (request line and headers) the gateway reads; larger: 431 and close.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long the gateway waits for a request's line and headers (from the connection's start, or "
        "from a later request's first bytes); then 408 and the connection is closed.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long the gateway waits for a whole request body after its headers; then 408 and the "
        "connection is closed.",
    )
    keep_alive_s: float = Field(
        default=75.0,
        gt=0,
        description="How long the gateway keeps an idle client connection open between requests.",
    )

    gate_policy: Path | None = Field(
        default=None,
        description="The publish gate's policy file (YAML: review manual|auto, required card fields, the scan's "
        "allow-list, benchmark calls, bias thresholds); unset: the defaults in docs/governance.md.",
    )
    gate_review: str | None = Field(
        default=None,
        pattern=r"^(manual|auto)$",
        description="Overrides the policy's review: 'auto' approves a submission whose stages all passed.",
    )
    max_package_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest package upload (POST /api/packages, a .tar.gz) the gateway accepts; larger: 413.",
    )
    max_package_unpacked_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        gt=0,
        description="Most bytes an uploaded package may unpack to; more: the upload is refused (a gzip bomb).",
    )
    max_package_members: int = Field(
        default=2_000, gt=0, description="Most files and folders an uploaded package may hold."
    )
    usage_checkpoint_s: float = Field(
        default=1.0,
        gt=0,
        description="Least time between the usage checkpoints kept as history (the latest checkpoint is signed "
        "after every metering batch regardless; this only thins the history).",
    )
    redact_max_chars: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Most characters of text one call may send to a model that redacts (its manifest's redact: or "
        "the key's policy); more: 413.",
    )
    redact_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Longest time redacting one call's text may take; longer: the call is refused (400), never "
        "sent unredacted.",
    )
    capture_max_chars: int = Field(
        default=4096,
        gt=0,
        description="Characters of each input and output kept per call for an account that opted in to capture "
        "(redacted of every entity first).",
    )
    capture_max_calls: int = Field(
        default=1000,
        gt=0,
        description="Captured calls kept per account that opted in; older ones are deleted.",
    )

    metrics_enabled: bool = Field(
        default=True,
        description="Serve Prometheus metrics at GET /metrics and record them (gateway, runners, metering).",
    )
    metrics_public: bool = Field(
        default=False,
        description="Answer GET /metrics without a key. Off: an operator's API key (Bearer) is required; "
        "turn on only where the listener is reachable by the scraper alone.",
    )
    tracing: bool = Field(
        default=False,
        description="Make OpenTelemetry spans for every request, from the gateway into the runners (W3C "
        "traceparent); an incoming traceparent is honoured either way.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint spans are exported to (e.g. http://127.0.0.1:4318/v1/traces); "
        "unset: spans are made (with MODELMARKET_TRACING) but not exported.",
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of new traces sampled (an incoming traceparent's sampled flag is followed).",
    )
    log_stderr: bool = Field(default=False, description="Also write the JSON request log lines to stderr.")
    log_max_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Size at which HOME/logs/requests.log is rotated."
    )
    log_backups: int = Field(default=5, ge=0, description="Rotated request logs kept (requests.log.1 ...).")
    dashboard_enabled: bool = Field(default=True, description="Serve the web dashboard at /.")
    session_ttl_s: float = Field(
        default=8 * 3600.0,
        gt=0,
        description="How long a dashboard sign-in lasts; signing out, or revoking the key it was made with, "
        "ends it sooner.",
    )
    # -- scale-out: the bus, the blob store, replicas (docs/scale-out.md) --
    bus_url: str | None = Field(
        default=None,
        description="The event bus. Default: the embedded log under HOME (events.db, and events-pN.db per further "
        "partition). NATS JetStream: nats://host:port.",
    )
    bus_namespace: str = Field(
        default="modelmarket",
        pattern=r"^[A-Za-z0-9_-]{1,40}$",
        description="Prefix of the JetStream streams and subjects this platform uses (one NATS server can carry "
        "several platforms).",
    )
    bus_partitions: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Partitions of the usage-event log; an account's events all go to one (ordering per account), "
        "each partition has its own metering consumer. Fixed once events exist.",
    )
    blob_url: str | None = Field(
        default=None,
        description="The artifact store. Default: content-addressed files under HOME/blobs. S3: s3://bucket[/prefix] "
        "(credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; endpoint from MODELMARKET_S3_ENDPOINT).",
    )
    s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint URL (e.g. http://127.0.0.1:8333 for SeaweedFS); unset: AWS's own."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region name sent with requests.")
    database_per_home: bool = Field(
        default=False,
        description="Set when MODELMARKET_DATABASE_URL names its database with {home_id}: the database is created "
        "on first use (one PostgreSQL server, a database per home).",
    )
    invalidation_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often a gateway checks the audit chain for changes made by other processes (keys, "
        "catalogue, routes, prices, plans, limits) when no bus message told it sooner. Bound: a change is in force "
        "on every replica within this (embedded bus), or within a NATS message's latency, plus one reload of the "
        "snapshots it touches (docs/scale-out.md).",
    )
    limit_lease_fraction: Decimal | None = Field(
        default=None,
        gt=0,
        le=1,
        description="With several gateways on one store: each leases blocks of this fraction of a limit "
        "(quota, grant, budget, rpm) from the store, so together they stay within it (docs/scale-out.md). "
        "Unset: 0.1 when MODELMARKET_BUS_URL is set (a bus is shared by replicas), else each gateway counts its "
        "own calls alone.",
    )

    @property
    def resolved_lease_fraction(self) -> Decimal | None:
        """The lease fraction in force: the setting, or 0.1 on a shared bus (replicas), or none."""
        if self.limit_lease_fraction is not None:
            return self.limit_lease_fraction
        return Decimal("0.1") if self.bus_url else None

    limit_lease_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a leased block outlives its gateway: a gateway renews its leases every third of "
        "this; a dead one's unused allowance comes back after it.",
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'modelmarket.db').resolve()}"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def event_log_path(self) -> Path:
        return self.home / "events.db"

    @property
    def runners_dir(self) -> Path:
        return self.home / "runners"

    @property
    def keys_dir(self) -> Path:
        """Signing keys (the audit checkpoints' Ed25519 key), private to the platform's user."""
        return self.home / "keys"

    @property
    def logs_dir(self) -> Path:
        """The JSON request log (``requests.log``, rotated by size)."""
        return self.home / "logs"

    @property
    def metrics_dir(self) -> Path:
        """prometheus-client's multiprocess files of this home's gateway and its children (wiped at start)."""
        return self.home / "run" / "metrics"

    @property
    def uploads_dir(self) -> Path:
        """Package uploads while the gate validates and stores them."""
        return self.home / "uploads"
