"""The shipped store contract (:mod:`gateway_sandbox.store_contract`), run against both built-in backends
(fixture ``backend``: sqlite, postgresql), plus the temporary store vendors use in unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.store.memory import temporary_store
from gateway.store.sqlite import SQLiteStore
from gateway_sandbox.store_contract import FakeClock, RawAccess, StoreContract

from .support import AnyStore, Backend, sqlite_backend


class TestBuiltinBackends(StoreContract):
    @pytest.fixture
    def store(self, backend: Backend) -> AnyStore:
        return backend.store

    @pytest.fixture
    def raw(self, backend: Backend) -> RawAccess:
        return backend.raw


class TestTemporaryStore(StoreContract):
    """The store for vendors' unit tests keeps every promise of the real one."""

    @pytest.fixture
    async def store(self, clock: FakeClock) -> AsyncIterator[SQLiteStore]:
        async with temporary_store(clock=clock) as store:
            yield store

    @pytest.fixture
    def raw(self, store: SQLiteStore) -> RawAccess:
        return sqlite_backend(store).raw
