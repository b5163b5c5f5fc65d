"""The journal-store conformance suite over SQLite, and what is SQLite's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dispytch.durable import NewRun, SQLiteJournalStore, journal_store_for_url
from dispytch.errors import ConfigError
from dispytch.testing.journal import JournalStoreConformance


class TestSQLiteConformance(JournalStoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteJournalStore]:
        s = SQLiteJournalStore(tmp_path / "j.sqlite3")
        await s.open()
        yield s
        await s.close()
        await s.close()


async def test_two_stores_on_one_file_share_the_journal_and_the_lease(tmp_path: Path) -> None:
    a = SQLiteJournalStore(tmp_path / "shared.sqlite3")
    b = SQLiteJournalStore(tmp_path / "shared.sqlite3")
    await a.open()
    await b.open()
    try:
        await a.create_run(NewRun("r", "f", "{}", "h"))
        assert await a.acquire("r", 30.0) is not None
        assert await b.acquire("r", 30.0) is None  # another connection sees the lease
        got = await b.get_run("r")
        assert got is not None and got.function == "f"
    finally:
        await a.close()
        await b.close()


def test_urls() -> None:
    store = journal_store_for_url("sqlite:///some/dir/j.db?synchronous=FULL")
    assert isinstance(store, SQLiteJournalStore)
    assert store.path == "some/dir/j.db" and store.synchronous == "FULL"
    assert journal_store_for_url("sqlite:////abs/j.db").path == "/abs/j.db"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="synchronous=NORMAL"):
        journal_store_for_url("sqlite:///j.db?fsync=1")
    with pytest.raises(ConfigError, match="names a host"):
        journal_store_for_url("sqlite://host/j.db")
    with pytest.raises(ConfigError, match="No journal store serves 'nope'"):
        journal_store_for_url("nope://x")
