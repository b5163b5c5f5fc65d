"""Journal stores by URL: ``sqlite:///path.db`` built in."""

from __future__ import annotations

from urllib.parse import urlsplit

from dispytch.durable.store import JournalStore, SQLiteJournalStore
from dispytch.errors import ConfigError

__all__ = ["journal_store_for_url"]


def journal_store_for_url(url: str) -> JournalStore:
    """The journal store a URL names.

    Raises:
        ConfigError: No store serves the URL's scheme (the message lists those that do).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SQLiteJournalStore.from_url(url)
    raise ConfigError(
        f"No journal store serves {scheme or url!r} URLs.\n"
        "Use sqlite:///path/to/journal.db (built in), or pass a JournalStore object."
    )
