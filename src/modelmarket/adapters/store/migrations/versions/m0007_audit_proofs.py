"""Verifiable audit: RFC 6962 Merkle trees over the audit chain and the applied usage events, signed checkpoints.

- ``merkle_leaves``: each tree's leaf hashes in order, with what each leaf is of (a usage event id, an audit seq).
- ``merkle_nodes``: the heads of the perfect subtrees at every 4th level, so a proof reads O(log n) rows.
- ``merkle_heads``: each tree's size, right edge (frontier) and latest signed checkpoint.
- ``merkle_checkpoints``: the history of signed checkpoints.

The trees of a store that already has records are built here, from the audit chain in seq order and the usage
events in log order, streamed in batches inside the migration's transaction. No checkpoint is signed here (the
migration has no key): the next audit record appended, and the next batch of usage events applied, sign one that
covers everything before it.

Revision ID: m0007
Revises: m0006
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from modelmarket.audit.chain import record_from_stored
from modelmarket.audit.leaves import AUDIT_TREE, USAGE_TREE, UsageFacts, audit_leaf, usage_leaf
from modelmarket.audit.merkle import Frontier, leaf_hash
from modelmarket.audit.ports import StoredAuditRecord
from modelmarket.metering.units import UnitKind

revision = "m0007"
down_revision = "m0006"
branch_labels = None
depends_on = None

BUILD_BATCH_ROWS = 5000
"""Rows read per round trip while building the trees of an existing store."""
STORED_LEVEL_STRIDE = 4
"""As ``audit.trees.STORED_LEVEL_STRIDE`` when this migration was written (the stored rows depend on it)."""

_TS = sa.String(40)
_HASH = sa.LargeBinary(32)

# Lightweight tables: this migration must keep working whatever the application's schema module becomes.
_audit_log = sa.table(
    "audit_log",
    *(sa.column(c) for c in ("seq", "occurred_at", "actor", "action", "subject", "payload_json", "prev_hash", "hash")),
)
_USAGE_COLUMNS = (
    "event_id",
    "account_id",
    "model_name",
    "version",
    "provider_account_id",
    "unit_kind",
    "quantity_base",
    "quantity_out",
    "unit_price",
    "amount_numerator",
    "currency",
    "occurred_at",
    "log_offset",
)
_usage_events = sa.table("usage_events", *(sa.column(c) for c in _USAGE_COLUMNS))
_leaves = sa.table(
    "merkle_leaves", sa.column("tree"), sa.column("leaf_index"), sa.column("ref"), sa.column("leaf_hash")
)
_nodes = sa.table(
    "merkle_nodes", sa.column("tree"), sa.column("level"), sa.column("node_index"), sa.column("node_hash")
)
_heads = sa.table("merkle_heads", sa.column("tree"), sa.column("tree_size"), sa.column("frontier"))


def upgrade() -> None:
    op.create_table(
        "merkle_leaves",
        sa.Column("tree", sa.String(16), primary_key=True),
        sa.Column("leaf_index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("leaf_hash", _HASH, nullable=False),
    )
    op.create_index("ux_merkle_leaves_ref", "merkle_leaves", ["tree", "ref"], unique=True)
    op.create_table(
        "merkle_nodes",
        sa.Column("tree", sa.String(16), primary_key=True),
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("node_index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("node_hash", _HASH, nullable=False),
    )
    op.create_table(
        "merkle_heads",
        sa.Column("tree", sa.String(16), primary_key=True),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.Column("checkpoint_size", sa.BigInteger, nullable=True),
        sa.Column("checkpoint_root", _HASH, nullable=True),
        sa.Column("checkpoint_signed_at", _TS, nullable=True),
        sa.Column("checkpoint_key_id", sa.String(16), nullable=True),
        sa.Column("checkpoint_signature", sa.LargeBinary(64), nullable=True),
    )
    op.create_table(
        "merkle_checkpoints",
        sa.Column("tree", sa.String(16), primary_key=True),
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", _HASH, nullable=False),
        sa.Column("signed_at", _TS, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )
    conn = op.get_bind()
    _build(conn, AUDIT_TREE, _audit_leaves(conn))
    _build(conn, USAGE_TREE, _usage_leaves(conn))


def downgrade() -> None:
    op.drop_table("merkle_checkpoints")
    op.drop_table("merkle_heads")
    op.drop_table("merkle_nodes")
    op.drop_index("ux_merkle_leaves_ref", table_name="merkle_leaves")
    op.drop_table("merkle_leaves")


def _build(conn: sa.Connection, tree: str, batches: Iterator[Sequence[tuple[str, bytes]]]) -> None:
    frontier = Frontier()
    for batch in batches:
        first = frontier.size
        rows, nodes = [], []
        for i, (ref, data) in enumerate(batch):
            h = leaf_hash(data)
            rows.append({"tree": tree, "leaf_index": first + i, "ref": ref, "leaf_hash": h})
            nodes += [
                {"tree": tree, "level": level, "node_index": index, "node_hash": head}
                for level, index, head in frontier.append(h, STORED_LEVEL_STRIDE)
            ]
        conn.execute(sa.insert(_leaves), rows)
        if nodes:
            conn.execute(sa.insert(_nodes), nodes)
    if frontier.size:
        conn.execute(sa.insert(_heads).values(tree=tree, tree_size=frontier.size, frontier=frontier.encode()))


def _audit_leaves(conn: sa.Connection) -> Iterator[list[tuple[str, bytes]]]:
    after = 0
    while True:
        rows = conn.execute(
            sa.select(_audit_log).where(_audit_log.c.seq > after).order_by(_audit_log.c.seq).limit(BUILD_BATCH_ROWS)
        ).all()
        if not rows:
            return
        yield [(str(r.seq), audit_leaf(record_from_stored(StoredAuditRecord._make(r)))) for r in rows]
        after = rows[-1].seq


def _usage_leaves(conn: sa.Connection) -> Iterator[list[tuple[str, bytes]]]:
    after = -1
    c = _usage_events.c
    while True:
        rows = conn.execute(
            sa.select(_usage_events).where(c.log_offset > after).order_by(c.log_offset).limit(BUILD_BATCH_ROWS)
        ).all()
        if not rows:
            return
        yield [(r.event_id, usage_leaf(_facts(r))) for r in rows]
        after = rows[-1].log_offset


def _facts(r: Any) -> UsageFacts:
    return UsageFacts(
        event_id=r.event_id,
        account_id=r.account_id,
        model=r.model_name,
        version=r.version,
        provider_account_id=r.provider_account_id,
        unit_kind=r.unit_kind,
        quantity=int(r.quantity_base),
        quantity_out=int(r.quantity_out),
        unit_price=str(r.unit_price),
        amount_numerator=str(r.amount_numerator),
        divisor=UnitKind(r.unit_kind).divisor,
        currency=r.currency,
        occurred_at=r.occurred_at,
        log_offset=int(r.log_offset),
    )
