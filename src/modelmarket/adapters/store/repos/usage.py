"""``UsageRepository`` (metering) on SQL: the usage tables, the consumer offsets and the rejects.

The per-event rows are the hot path (one per event the metering consumer applies): they are built as plain tuples
(the text of each exact amount made here, as ``schema.DecimalText`` and ``FractionText`` would make it) and
written without SQLAlchemy's per-row bind processing: ``executemany`` on SQLite, ``COPY`` on PostgreSQL, on the
unit of work's own connection (so in its transaction).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, date, timedelta
from typing import Any

from sqlalchemy import Connection, Numeric, bindparam, cast, delete, func, insert, select, tuple_, update

from modelmarket.adapters.store import schema as t
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.ports import CallStats, DailyKey, DailyUsage, ModelActivity, Reject
from modelmarket.metering.units import UnitKind

_D = t.usage_daily.c
_O = t.consumer_offsets.c
USAGE_COLUMNS = (
    "event_id",
    "account_id",
    "model_name",
    "version",
    "provider_account_id",
    "unit_kind",
    "quantity_base",
    "unit_price",
    "amount_numerator",
    "currency",
    "occurred_at",
    "day",
    "latency_ms",
    "log_offset",
    "quantity_out",
    "pipeline_call_id",
    "price_factor",
)
"""The columns of ``usage_events`` that metering writes, in the order of ``usage_columns``."""
ID_LOOKUP_MAX = 5000
"""Event ids per duplicate-check query (a bounded IN list)."""
DAILY_LOOKUP_MAX = 500
"""Per-day keys read per query (a bounded IN list of row values)."""
_DAILY_KEY = ("account_id", "model_name", "day", "unit_kind", "currency")
_DAILY_VALUES = {
    "events": bindparam("v_events"),
    "quantity_base": bindparam("v_quantity_base"),
    "amount_numerator": bindparam("v_amount_numerator", type_=t.DecimalText()),
}
_INSERT_DAILY = insert(t.usage_daily).values({**{k: bindparam(f"k_{k}") for k in _DAILY_KEY}, **_DAILY_VALUES})
_UPDATE_DAILY = update(t.usage_daily).where(*(_D[k] == bindparam(f"k_{k}") for k in _DAILY_KEY)).values(_DAILY_VALUES)
_KNOWN_IDS_PG = "SELECT event_id FROM usage_events WHERE event_id = ANY(%s)"
_KNOWN_IDS_SQLITE = "SELECT event_id FROM usage_events WHERE event_id IN ({})"


class Texts:
    """The column text of the values the event rows repeat (days, prices, amounts), made once per value, for
    the rows of one insert."""

    def __init__(self) -> None:
        self.days: dict[date, str] = {}
        self.numerators: dict[tuple[int, str], str] = {}
        self.objects: dict[int, tuple[Any, str]] = {}

    def by_identity(self, value: Any) -> str:
        """``str(value)`` of an object the rows share (decoding reuses one Decimal per distinct text, rating one
        Fraction per distinct amount). By identity: hashing a Fraction costs more than printing it, and a Decimal
        hashes by value (0.0010 == 0.001) while its text keeps the zeros."""
        found = self.objects.get(id(value))
        if found is None or found[0] is not value:
            found = self.objects[id(value)] = (value, str(value))
        return found[1]


_UNIT_TEXT = {unit: unit.value for unit in UnitKind}


def usage_columns(offset: int, e: UsageEvent, texts: Texts) -> tuple[Any, ...]:
    """The metering half of an event's row (``USAGE_COLUMNS``), as the driver takes it: the text of each exact
    amount as ``schema.DecimalText`` would write it."""
    day = e.time.astimezone(UTC).date()
    day_text = texts.days.get(day)
    if day_text is None:
        day_text = texts.days[day] = day.isoformat()
    price = texts.by_identity(e.unit_price)  # (not by value: 0.0010 == 0.001, and the text keeps the zeros)
    numerator = texts.numerators.get((e.quantity, price))
    if numerator is None:
        numerator = texts.numerators[(e.quantity, price)] = str(e.amount_numerator)
    return (
        e.id,
        e.account_id,
        e.model,
        e.version,
        e.provider_account_id,
        _UNIT_TEXT[e.unit_kind],
        e.quantity,
        price,
        numerator,
        e.currency,
        e.time.isoformat(),
        day_text,
        texts.by_identity(e.latency_ms),
        offset,
        e.quantity_out,
        e.pipeline_call_id,
        texts.by_identity(e.price_factor),
    )


def insert_rows(conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert plain tuples into ``table`` on ``conn``'s transaction: ``COPY`` on PostgreSQL (psycopg 3), else one
    ``executemany`` with the driver's parameter style."""
    if not rows:
        return
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join(mark for _ in columns)
    conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(rows))


def _daily(row: Any) -> DailyUsage:
    return DailyUsage(
        row.account_id,
        row.model_name,
        row.day,
        UnitKind(row.unit_kind),
        row.currency,
        int(row.events),
        int(row.quantity_base),
        row.amount_numerator,
    )


class SqlUsageRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _offset_row(self, consumer: str) -> Any:
        return self.conn.execute(select(t.consumer_offsets).where(_O.consumer == consumer)).first()

    def offset(self, consumer: str) -> int:
        row = self._offset_row(consumer)
        return 0 if row is None else int(row.log_offset)

    def save_offset(self, consumer: str, offset: int) -> None:
        self._upsert_offset(consumer, log_offset=offset)

    def halted(self, consumer: str) -> str | None:
        row = self._offset_row(consumer)
        return None if row is None else row.halted_reason

    def set_halted(self, consumer: str, reason: str | None) -> None:
        self._upsert_offset(consumer, halted_reason=reason)

    def _upsert_offset(self, consumer: str, **values: Any) -> None:
        changed = self.conn.execute(update(t.consumer_offsets).where(_O.consumer == consumer).values(**values))
        if changed.rowcount == 0:
            self.conn.execute(insert(t.consumer_offsets).values({"consumer": consumer, "log_offset": 0, **values}))

    def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        ids = list(event_ids)
        postgres = self.conn.dialect.name == "postgresql"
        for i in range(0, len(ids), ID_LOOKUP_MAX):
            chunk = ids[i : i + ID_LOOKUP_MAX]
            if postgres:
                rows = self.conn.exec_driver_sql(_KNOWN_IDS_PG, (chunk,))
            else:
                rows = self.conn.exec_driver_sql(_KNOWN_IDS_SQLITE.format(", ".join("?" * len(chunk))), tuple(chunk))
            found.update(row[0] for row in rows)
        return found

    def add_events(self, events: Sequence[tuple[int, UsageEvent]]) -> None:
        texts = Texts()
        insert_rows(self.conn, "usage_events", USAGE_COLUMNS, [usage_columns(o, e, texts) for o, e in events])

    def daily(self, keys: Collection[DailyKey]) -> dict[DailyKey, DailyUsage]:
        found: dict[DailyKey, DailyUsage] = {}
        wanted = [(a, m, d, u.value, c) for a, m, d, u, c in keys]
        columns = tuple_(_D.account_id, _D.model_name, _D.day, _D.unit_kind, _D.currency)
        for i in range(0, len(wanted), DAILY_LOOKUP_MAX):
            for row in self.conn.execute(select(t.usage_daily).where(columns.in_(wanted[i : i + DAILY_LOOKUP_MAX]))):
                daily = _daily(row)
                found[daily.key] = daily
        return found

    def put_daily(self, rows: Sequence[DailyUsage], existing: Collection[DailyKey]) -> None:
        values = [
            {
                "k_account_id": r.account_id,
                "k_model_name": r.model_name,
                "k_day": r.day,
                "k_unit_kind": r.unit_kind.value,
                "k_currency": r.currency,
                "v_events": r.events,
                "v_quantity_base": r.quantity_base,
                "v_amount_numerator": r.amount_numerator,
            }
            for r in rows
        ]
        new = [v for v, r in zip(values, rows, strict=True) if r.key not in existing]
        changed = [v for v, r in zip(values, rows, strict=True) if r.key in existing]
        if new:
            self.conn.execute(_INSERT_DAILY, new)
        if changed:
            self.conn.execute(_UPDATE_DAILY, changed)

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        r = t.metering_rejects.c
        known: set[tuple[int, int]] = set()
        for partition in {x.partition for x in rejects}:
            offsets = [x.log_offset for x in rejects if x.partition == partition]
            query = select(r.log_offset).where(r.log_partition == partition, r.log_offset.in_(offsets))
            known |= {(partition, offset) for offset in self.conn.execute(query).scalars()}
        fresh = [
            {
                "log_partition": x.partition,
                "log_offset": x.log_offset,
                "event_id": x.event_id,
                "error": x.error,
                "payload": x.payload,
                "rejected_at": x.rejected_at,
            }
            for x in rejects
            if (x.partition, x.log_offset) not in known
        ]
        if fresh:
            self.conn.execute(insert(t.metering_rejects), fresh)

    def daily_usage(self, account_id: str, since: str | None, until: str | None) -> list[DailyUsage]:
        query = select(t.usage_daily).where(_D.account_id == account_id)
        if since:
            query = query.where(_D.day >= since)
        if until:
            query = query.where(_D.day <= until)
        return [_daily(r) for r in self.conn.execute(query.order_by(_D.day, _D.model_name))]

    def daily_usage_all(self) -> list[DailyUsage]:
        query = select(t.usage_daily).order_by(_D.account_id, _D.model_name, _D.day, _D.unit_kind, _D.currency)
        return [_daily(r) for r in self.conn.execute(query)]

    def call_stats(self, since: str, until: str, latency_of: Collection[str] = ()) -> list[CallStats]:
        e = t.usage_events.c
        in_range = (e.occurred_at >= since, e.occurred_at < until)
        counts = self.conn.execute(
            select(e.model_name, func.count()).where(*in_range).group_by(e.model_name).order_by(e.model_name)
        ).all()
        wanted = set(latency_of)
        out = []
        for model_name, calls in counts:
            p50 = None
            if model_name in wanted:
                # Nearest rank, in SQL: the ceil(calls/2)-th smallest latency (the text column sorts as a number).
                p50 = self.conn.execute(
                    select(e.latency_ms)
                    .where(e.model_name == model_name, *in_range)
                    .order_by(cast(e.latency_ms, Numeric))
                    .offset((int(calls) + 1) // 2 - 1)
                    .limit(1)
                ).scalar_one()
            out.append(CallStats(model_name, int(calls), p50))
        return out

    def clear_derived(self, consumer: str) -> None:
        self.conn.execute(delete(t.usage_events))
        self.conn.execute(delete(t.usage_daily))
        self.conn.execute(delete(t.metering_rejects))
        self.save_offset(consumer, 0)

    def model_activity(
        self, model_names: Collection[str], since_day: str, until_day: str, latency_sample_max: int
    ) -> list[ModelActivity]:
        names, e = sorted(set(model_names)), t.usage_events.c
        calls: dict[str, int] = {}
        for i in range(0, len(names), DAILY_LOOKUP_MAX):
            batch = names[i : i + DAILY_LOOKUP_MAX]
            days = (_D.model_name.in_(batch), _D.day >= since_day, _D.day <= until_day)
            for name, count in self.conn.execute(
                select(_D.model_name, func.sum(_D.events)).where(*days).group_by(_D.model_name)
            ):
                calls[name] = int(count)
        # Events of a day: occurred_at from the day (a shorter prefix sorts first) to before the day after.
        after = (date.fromisoformat(until_day) + timedelta(days=1)).isoformat()
        out = []
        for name in sorted(n for n, c in calls.items() if c > 0):
            latest = (  # the newest first along the (model_name, occurred_at) index, at most the sample
                select(e.latency_ms)
                .where(e.model_name == name, e.occurred_at >= since_day, e.occurred_at < after)
                .order_by(e.occurred_at.desc())
                .limit(latency_sample_max)
            )
            sample = sorted(self.conn.execute(latest).scalars())
            n = len(sample)  # nearest rank: the ceil(n * p / 100)-th smallest
            p50, p95 = (sample[(n * p + 99) // 100 - 1] if n else None for p in (50, 95))
            out.append(ModelActivity(name, calls[name], p50, p95))
        return out
