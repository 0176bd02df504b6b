"""Where runs are kept: run folders and their SQLite index, or a PostgreSQL database.

Importing the package registers the stores delib ships with ``store``'s registry: the folder
archive, and PostgreSQL for ``postgresql://`` addresses (its module, and psycopg, are imported
only when such an address is opened).
"""

from __future__ import annotations

from delib.archive import store
from delib.archive.folder_store import FolderStore
from delib.archive.pgschema import SCHEMES as PG_SCHEMES
from delib.errors import InputError


def _open_postgres(location: str) -> store.Store:
    try:
        from delib.archive.pgstore import PgStore
    except ImportError:
        raise InputError(
            "a PostgreSQL archive needs the cluster extra: pip install 'delib[cluster]'"
        ) from None
    return PgStore.connect(location)


store.register(PG_SCHEMES, _open_postgres)
store.register_folder(FolderStore)
