"""Dispytch plugin: the ``postgresql://`` / ``postgres://`` journal store.

This module does not import asyncpg: the factory does, when called.
"""

from __future__ import annotations

from typing import Any

from dispytch.plugins.hookspecs import hookimpl
from dispytch.plugins.records import JournalStoreSpec


def journal_store(url: str) -> Any:
    """``PostgresJournalStore.from_url`` (imports asyncpg; does not connect)."""
    from dispytch.postgres.store import PostgresJournalStore

    return PostgresJournalStore.from_url(url)


@hookimpl
def dispytch_journal_stores() -> list[JournalStoreSpec]:
    return [
        JournalStoreSpec(
            name="postgres",
            schemes=("postgresql", "postgres"),
            factory=journal_store,
            description="PostgreSQL journal for durable functions (asyncpg)",
        )
    ]
