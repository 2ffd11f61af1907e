"""``MerkleRepository`` (audit) on SQL: the verifiable trees' leaves, subtree heads, heads and checkpoints, and the
rows their leaves are made of (``usage_events``, ``audit_log``), read as stored text.

The usage tree's leaves are written on the metering hot path, as plain tuples through ``insert_rows``
(``executemany`` on SQLite, ``COPY`` on PostgreSQL), like the usage rows themselves.

``on_commit`` actions (the copy of a new checkpoint kept outside the store) run from the connection's ``commit``
event, which SQLAlchemy fires just before the database commits: one that raises leaves nothing committed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, String, and_, delete, event, func, insert, select, type_coerce, update

from modelmarket.adapters.store import schema as t
from modelmarket.adapters.store.repos.usage import insert_rows
from modelmarket.audit.checkpoints import Checkpoint
from modelmarket.audit.leaves import AUDIT_TREE, UsageFacts
from modelmarket.audit.ports import StoredAuditRecord, StoredLeaf, TreeHead
from modelmarket.metering.units import UnitKind

_L = t.merkle_leaves.c
_N = t.merkle_nodes.c
_H = t.merkle_heads.c
_C = t.merkle_checkpoints.c
_U = t.usage_events.c
_A = t.audit_log.c
_LEAF_COLUMNS = ("tree", "leaf_index", "ref", "leaf_hash")
_USAGE_FACTS = (
    _U.event_id,
    _U.account_id,
    _U.model_name,
    _U.version,
    _U.provider_account_id,
    _U.unit_kind,
    _U.quantity_base,
    _U.quantity_out,
    type_coerce(_U.unit_price, String).label("unit_price"),  # the stored text, not a Decimal made of it
    type_coerce(_U.amount_numerator, String).label("amount_numerator"),
    _U.currency,
    _U.occurred_at,
    _U.log_offset,
)
_AUDIT_COLUMNS = (_A.seq, _A.occurred_at, _A.actor, _A.action, _A.subject, _A.payload_json, _A.prev_hash, _A.hash)
_DIVISORS = {unit.value: unit.divisor for unit in UnitKind}
INDEX_LOOKUP_MAX = 1000
"""Leaf or node indexes per query (a bounded IN list)."""


def _facts(row: Any) -> UsageFacts:
    return UsageFacts(
        event_id=row.event_id,
        account_id=row.account_id,
        model=row.model_name,
        version=row.version,
        provider_account_id=row.provider_account_id,
        unit_kind=row.unit_kind,
        quantity=int(row.quantity_base),
        quantity_out=int(row.quantity_out),
        unit_price=row.unit_price,
        amount_numerator=row.amount_numerator,
        divisor=_DIVISORS.get(row.unit_kind, 1),
        currency=row.currency,
        occurred_at=row.occurred_at,
        log_offset=int(row.log_offset),
    )


def _checkpoint(tree: str, size: Any, root: Any, signed_at: Any, key_id: Any, signature: Any) -> Checkpoint:
    return Checkpoint(tree, int(size), bytes(root), signed_at, key_id, bytes(signature))


def _leaf(row: Any) -> StoredLeaf:
    return StoredLeaf(int(row.leaf_index), row.ref, bytes(row.leaf_hash))


class SqlProofRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._on_commit: dict[str, Callable[[], None]] = {}
        self._listening = False

    # -- growing ---------------------------------------------------------------------------------------------

    def on_commit(self, key: str, action: Callable[[], None]) -> None:
        if not self._listening:
            event.listen(self.conn, "commit", self._committing)
            event.listen(self.conn, "rollback", self._rolled_back)
            self._listening = True
        self._on_commit.pop(key, None)
        self._on_commit[key] = action  # in the order last asked for

    def _committing(self, conn: Connection) -> None:
        actions, self._on_commit = list(self._on_commit.values()), {}
        for action in actions:
            action()

    def _rolled_back(self, conn: Connection) -> None:
        self._on_commit = {}

    def head(self, tree: str) -> TreeHead | None:
        row = self.conn.execute(select(t.merkle_heads).where(_H.tree == tree)).first()
        if row is None:
            return None
        checkpoint = None
        if row.checkpoint_size is not None:
            checkpoint = _checkpoint(
                tree,
                row.checkpoint_size,
                row.checkpoint_root,
                row.checkpoint_signed_at,
                row.checkpoint_key_id,
                row.checkpoint_signature,
            )
        return TreeHead(int(row.tree_size), bytes(row.frontier), checkpoint)

    def save_head(self, tree: str, head: TreeHead) -> None:
        cp = head.checkpoint
        values = {
            "tree_size": head.size,
            "frontier": head.frontier,
            "checkpoint_size": None if cp is None else cp.size,
            "checkpoint_root": None if cp is None else cp.root,
            "checkpoint_signed_at": None if cp is None else cp.signed_at,
            "checkpoint_key_id": None if cp is None else cp.key_id,
            "checkpoint_signature": None if cp is None else cp.signature,
        }
        if self.conn.execute(update(t.merkle_heads).where(_H.tree == tree).values(values)).rowcount == 0:
            self.conn.execute(insert(t.merkle_heads).values(tree=tree, **values))

    def add_leaves(self, tree: str, first_index: int, leaves: Sequence[tuple[str, bytes]]) -> None:
        rows = [(tree, first_index + i, ref, h) for i, (ref, h) in enumerate(leaves)]
        insert_rows(self.conn, "merkle_leaves", _LEAF_COLUMNS, rows)

    def add_nodes(self, tree: str, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        if nodes:
            self.conn.execute(
                insert(t.merkle_nodes),
                [{"tree": tree, "level": lv, "node_index": i, "node_hash": h} for lv, i, h in nodes],
            )

    def clear(self, tree: str) -> None:
        for table in (t.merkle_leaves, t.merkle_nodes):
            self.conn.execute(delete(table).where(table.c.tree == tree))
        self.conn.execute(update(t.merkle_heads).where(_H.tree == tree).values(tree_size=0, frontier=b""))

    # -- checkpoints -----------------------------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        cp = checkpoint
        self.conn.execute(
            insert(t.merkle_checkpoints).values(
                tree=cp.tree,
                tree_size=cp.size,
                root=cp.root,
                signed_at=cp.signed_at,
                key_id=cp.key_id,
                signature=cp.signature,
            )
        )

    def _checkpoints(self, tree: str, *where: Any, newest: bool = False, limit: int = 1) -> list[Checkpoint]:
        order = _C.tree_size.desc() if newest else _C.tree_size
        stmt = select(t.merkle_checkpoints).where(_C.tree == tree, *where).order_by(order).limit(limit)
        return [
            _checkpoint(tree, r.tree_size, r.root, r.signed_at, r.key_id, r.signature) for r in self.conn.execute(stmt)
        ]

    def checkpoint(self, tree: str, size: int) -> Checkpoint | None:
        found = self._checkpoints(tree, _C.tree_size == size)
        return found[0] if found else None

    def checkpoints(self, tree: str, after_size: int, limit: int) -> list[Checkpoint]:
        return self._checkpoints(tree, _C.tree_size > after_size, limit=limit)

    def newest_checkpoint(self, tree: str) -> Checkpoint | None:
        found = self._checkpoints(tree, newest=True)
        return found[0] if found else None

    # -- proving ---------------------------------------------------------------------------------------------

    def hashes_at(self, tree: str, level: int, indexes: Collection[int]) -> dict[int, bytes]:
        wanted = sorted(indexes)
        found: dict[int, bytes] = {}
        for i in range(0, len(wanted), INDEX_LOOKUP_MAX):
            chunk = wanted[i : i + INDEX_LOOKUP_MAX]
            if level == 0:
                stmt = select(_L.leaf_index, _L.leaf_hash).where(_L.tree == tree, _L.leaf_index.in_(chunk))
            else:
                where = (_N.tree == tree, _N.level == level, _N.node_index.in_(chunk))
                stmt = select(_N.node_index, _N.node_hash).where(*where)
            found.update((int(k), bytes(h)) for k, h in self.conn.execute(stmt))
        return found

    def leaf(self, tree: str, ref: str) -> StoredLeaf | None:
        row = self.conn.execute(select(t.merkle_leaves).where(_L.tree == tree, _L.ref == ref)).first()
        return None if row is None else _leaf(row)

    def usage_facts(self, event_id: str) -> UsageFacts | None:
        row = self.conn.execute(select(*_USAGE_FACTS).where(_U.event_id == event_id)).first()
        return None if row is None else _facts(row)

    def audit_record(self, seq: int) -> StoredAuditRecord | None:
        row = self.conn.execute(select(*_AUDIT_COLUMNS).where(_A.seq == seq)).first()
        return None if row is None else StoredAuditRecord._make(row)

    # -- verifying -------------------------------------------------------------------------------------------

    def usage_leaves(self, after_index: int, limit: int) -> list[tuple[StoredLeaf, UsageFacts | None]]:
        stmt = (
            select(_L.leaf_index, _L.ref, _L.leaf_hash, *_USAGE_FACTS)
            .select_from(t.merkle_leaves.outerjoin(t.usage_events, _U.event_id == _L.ref))
            .where(_L.tree == "usage", _L.leaf_index > after_index)
            .order_by(_L.leaf_index)
            .limit(limit)
        )
        return [(_leaf(r), None if r.event_id is None else _facts(r)) for r in self.conn.execute(stmt)]

    def audit_leaves(self, after_index: int, limit: int) -> list[tuple[StoredLeaf, StoredAuditRecord | None]]:
        stmt = (
            select(_L.leaf_index, _L.ref, _L.leaf_hash, *_AUDIT_COLUMNS)
            .select_from(t.merkle_leaves.outerjoin(t.audit_log, _A.seq == _L.leaf_index + 1))
            .where(_L.tree == AUDIT_TREE, _L.leaf_index > after_index)
            .order_by(_L.leaf_index)
            .limit(limit)
        )
        out = []
        for r in self.conn.execute(stmt):
            record = None if r.seq is None else StoredAuditRecord(*r[3:])
            out.append((_leaf(r), record))
        return out

    def nodes(self, tree: str, level: int, after_index: int, limit: int) -> list[tuple[int, bytes]]:
        stmt = (
            select(_N.node_index, _N.node_hash)
            .where(_N.tree == tree, _N.level == level, _N.node_index > after_index)
            .order_by(_N.node_index)
            .limit(limit)
        )
        return [(int(i), bytes(h)) for i, h in self.conn.execute(stmt)]

    def source_rows(self, tree: str) -> int:
        table = t.audit_log if tree == AUDIT_TREE else t.usage_events
        return int(self.conn.execute(select(func.count()).select_from(table)).scalar_one())

    def outside_tree(self, tree: str, limit: int) -> list[str]:
        if tree == AUDIT_TREE:
            join = t.audit_log.outerjoin(t.merkle_leaves, and_(_L.tree == tree, _L.leaf_index == _A.seq - 1))
            stmt = select(_A.seq).select_from(join).where(_L.leaf_index.is_(None)).order_by(_A.seq).limit(limit)
        else:
            join = t.usage_events.outerjoin(t.merkle_leaves, and_(_L.tree == tree, _L.ref == _U.event_id))
            stmt = (
                select(_U.event_id)
                .select_from(join)
                .where(_L.leaf_index.is_(None))
                .order_by(_U.log_offset)
                .limit(limit)
            )
        return [str(v) for v in self.conn.execute(stmt).scalars()]
