"""Fixtures of the durable tests: a fresh SQLite journal and memory broker per test, and
pickle made unusable for every durable test (nothing may pickle, ever)."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dispytch.backoff import Backoff
from dispytch.durable import Durable, SQLiteJournalStore


class PickleUsed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """pickle.loads / dumps (and load / dump) raise for the whole durable test run."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PickleUsed("pickle was used by a durable function")

    for name in ("loads", "dumps", "load", "dump"):
        monkeypatch.setattr(pickle, name, refuse)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def make_durable(journal_path: Path) -> Any:
    """Durable objects over one fresh memory broker and one journal file."""
    transport = f"memory://durable-{uuid.uuid4().hex}"

    def make(**kwargs: Any) -> Durable:
        kwargs.setdefault("backoff", Backoff(initial=0.01, factor=2.0, cap=0.05))
        kwargs.setdefault("store", SQLiteJournalStore(journal_path))
        return Durable(transport, **kwargs)

    return make


@pytest.fixture
async def durable(make_durable: Any) -> AsyncIterator[Durable]:
    d: Durable = make_durable()
    yield d
    await d.stop()
