"""The throwaway PostgreSQL server now lives in ``modelmarket.cluster.postgres`` (``modelmarket cluster`` starts it
too); tests and benchmarks import it from here."""

from modelmarket.cluster.postgres import (  # noqa: F401  (re-exported)
    PostgresServer,
    PostgresUnavailable,
    find_pg_tools,
    running_postgres,
)
