"""Metering rejects keyed by (partition, offset): offsets repeat across the log's partitions, so a bad record in
one partition no longer hides one at the same offset in another.

The table is derived from the log (a rebuild clears and refills it); its rows are copied as partition 0's, where
every record was before partitions existed.

Revision ID: m0010
Revises: m0009
"""

import sqlalchemy as sa
from alembic import op

revision = "m0010"
down_revision = "m0009"
branch_labels = None
depends_on = None

_TS = sa.String(40)
_COLUMNS = "log_offset, event_id, error, payload, rejected_at"


def _table(name: str, *key: sa.Column[int]) -> None:
    op.create_table(
        name,
        *key,
        sa.Column("log_offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("rejected_at", _TS, nullable=False),
    )


def upgrade() -> None:
    _table("metering_rejects_p", sa.Column("log_partition", sa.Integer, primary_key=True, autoincrement=False))
    op.execute(f"INSERT INTO metering_rejects_p (log_partition, {_COLUMNS}) SELECT 0, {_COLUMNS} FROM metering_rejects")
    op.drop_table("metering_rejects")
    op.rename_table("metering_rejects_p", "metering_rejects")


def downgrade() -> None:
    _table("metering_rejects_o")
    op.execute(
        f"INSERT INTO metering_rejects_o ({_COLUMNS}) SELECT {_COLUMNS} FROM metering_rejects WHERE log_partition = 0"
    )
    op.drop_table("metering_rejects")
    op.rename_table("metering_rejects_o", "metering_rejects")
