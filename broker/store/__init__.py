"""The seam between the domain and the database (contract: ``broker.store.base``).

``open_store(config)`` is the one place that chooses and opens the configured store;
the application, the benchmarks and the tests call it rather than naming a store class.
With ``config.database`` set it is PostgreSQL (``broker.store.postgres``, shared by
several broker replicas); otherwise the embedded SQLite store (``broker.store.sqlite``) on
``config.db_path`` with ``config.sqlite_synchronous``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker.errors import StorageUnavailable
from broker.ids import IdSource, new_id
from broker.store.base import Store

if TYPE_CHECKING:
    from broker.config import Config


async def open_store(config: Config, ids: IdSource = new_id) -> Store:
    """Open (creating and migrating as needed) the store ``config`` names.

    ``ids`` is where new rows' ids come from (random by default; the model tests count).
    Raises ``StorageUnavailable`` when the database cannot be opened.
    """
    # Imported here: only the store chosen is loaded (psycopg is an optional extra), and
    # a test may stand a subclass in for a module's class.
    if config.database is not None:
        try:
            from broker.store.postgres import PostgresStore
        except ImportError as exc:
            raise StorageUnavailable(
                f"setting 'database' names PostgreSQL, but its driver is not installed ({exc.name}): "
                "pip install 'tenure[postgres]'"
            ) from exc
        return await PostgresStore.open(
            config.database, config.database_pool_size, config.database_timeout_seconds, ids
        )
    if config.relay_writes:  # a worker of several (broker.workers): one writer process writes
        from broker.store.relay import RelayedSqliteStore

        return await RelayedSqliteStore.open(config.db_path, config.sqlite_synchronous, ids)
    from broker.store.sqlite import SqliteStore

    return await SqliteStore.open(config.db_path, config.sqlite_synchronous, ids)


def describe_database(url: str) -> str:
    """Where a PostgreSQL URL points, for a log line: ``HOST:PORT/DB``, never a password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path}"
