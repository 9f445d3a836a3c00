"""The seam between the domain and the database (contract: ``broker.store.base``).

``open_store(config)`` is the one place that chooses and opens the configured store;
the application, the benchmarks and the tests call it rather than naming a store class.
Today the only store is the embedded SQLite one (``broker.store.sqlite``) on
``config.db_path`` with ``config.sqlite_synchronous``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.ids import IdSource, new_id
from broker.store.base import Store

if TYPE_CHECKING:
    from broker.config import Config


async def open_store(config: Config, ids: IdSource = new_id) -> Store:
    """Open (creating and migrating as needed) the store ``config`` names.

    ``ids`` is where new rows' ids come from (random by default; the model tests count).
    Raises ``StorageUnavailable`` when the database cannot be opened.
    """
    # Imported here, as a second store's driver would be: only the store chosen is loaded
    # (and a test may stand a subclass in for the module's class).
    from broker.store.sqlite import SqliteStore

    return await SqliteStore.open(config.db_path, config.sqlite_synchronous, ids)
