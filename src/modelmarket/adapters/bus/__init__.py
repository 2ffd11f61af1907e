"""Event log port and its embedded adapter (append-only SQLite log with group commit)."""

from modelmarket.adapters.bus.sqlite_log import (
    GroupCommitWriter,
    LoopGroupCommitWriter,
    SqliteEventLog,
    make_writer,
)
from modelmarket.metering.ports import EventLogFull

__all__ = [
    "EventLogFull",
    "GroupCommitWriter",
    "LoopGroupCommitWriter",
    "SqliteEventLog",
    "make_writer",
]
