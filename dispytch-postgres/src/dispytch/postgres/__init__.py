"""PostgreSQL journal store for Dispytch durable functions (asyncpg)."""

from __future__ import annotations

from dispytch.postgres.store import PostgresJournalStore

__all__ = ["PostgresJournalStore"]
