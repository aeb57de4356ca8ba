"""A throwaway store for unit tests: the real SQLite backend on a temporary file.

Not an in-memory imitation: SQLite's ``:memory:`` database has no WAL file to fsync and is not
visible to a second connection (which audit verification and the readiness probe use), so it would
need a second code path whose semantics the contract suite would have to prove again. A temporary
file runs exactly the code production runs and costs a few milliseconds to create; put it on a
tmpfs (``directory="/dev/shm"``) to make the fsyncs free::

    async with temporary_store() as store:
        stored, _ = await store.insert(envelope, actor="test")
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from gateway.store.sqlite import SQLiteStore


@contextlib.asynccontextmanager
async def temporary_store(
    *, clock: Callable[[], float] = time.time, directory: str | Path | None = None
) -> AsyncIterator[SQLiteStore]:
    """An open store on a fresh database, closed and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="gateway-store-", dir=directory))
    store = SQLiteStore(root / "gateway.db", clock=clock)
    try:
        await store.open()
        try:
            yield store
        finally:
            await store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
