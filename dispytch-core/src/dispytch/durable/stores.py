"""Journal stores by URL: ``sqlite:///path.db`` built in, others from plugins
(the ``dispytch_journal_stores`` hook)."""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

from dispytch.durable.store import JournalStore, SQLiteJournalStore
from dispytch.errors import ConfigError
from dispytch.plugins import journal_store_schemes, journal_store_spec

__all__ = ["journal_store_for_url"]


def journal_store_for_url(url: str) -> JournalStore:
    """The journal store a URL names (the store is built, not connected).

    Raises:
        ConfigError: No store serves the URL's scheme (the message lists those that do).
        PluginError: Two plugins claim the scheme.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SQLiteJournalStore.from_url(url)
    spec = journal_store_spec(scheme) if scheme else None
    if spec is not None:
        return cast(JournalStore, spec.factory(url))
    served = ", ".join(f"{s}://" for s in ["sqlite", *journal_store_schemes()])
    raise ConfigError(
        f"No journal store serves {scheme or url!r} URLs (served: {served}).\n"
        "Install the store's plugin (dispytch-postgres for postgresql://, dispytch-redis "
        "for redis://) or pass a "
        "JournalStore object."
    )
