"""Every read of aiokafka internals, in one place (aiokafka offers no public API for these).

Each function reads an attribute that aiokafka sets in its constructor or lifecycle and
documents nowhere; ``tests/kafka/test_compat.py`` checks each one against the installed
aiokafka so that an upgrade that renames or removes it fails the tests loudly instead of
silently changing behaviour. Nothing here writes to aiokafka's objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_MISSING = object()


def _read(obj: Any, name: str) -> Any:
    value = getattr(obj, name, _MISSING)
    if value is _MISSING:
        raise RuntimeError(
            f"{type(obj).__name__} has no attribute {name!r}: this aiokafka version is not "
            "supported by dispytch-kafka. Install the aiokafka range dispytch-kafka declares."
        )
    return value


def consumer_auto_commit(raw: Any) -> bool:
    """Whether an ``AIOKafkaConsumer`` was built with ``enable_auto_commit=True``."""
    return bool(_read(raw, "_enable_auto_commit"))


def consumer_group_id(raw: Any) -> str | None:
    """The ``group_id`` an ``AIOKafkaConsumer`` was built with."""
    value = _read(raw, "_group_id")
    return value if value is None else str(value)


def client_closed(raw: Any) -> bool:
    """Whether an ``AIOKafkaConsumer``/``AIOKafkaProducer`` was stopped.

    ``_closed`` is ``None`` on a producer whose constructor failed, ``False`` while
    usable, ``True`` after ``stop()``.
    """
    return bool(_read(raw, "_closed"))


def consumer_max_poll_interval(raw: Any) -> float:
    """The ``max_poll_interval_ms`` of an ``AIOKafkaConsumer``, in seconds: how long it may
    go without a ``getmany`` before aiokafka leaves its group (its partitions, and the
    records being handled, then go to another member)."""
    return float(_read(raw, "_max_poll_interval_ms")) / 1000


def consumer_started(raw: Any) -> bool:
    """Whether ``start()`` ran on an ``AIOKafkaConsumer`` (its fetcher exists then)."""
    return _read(raw, "_fetcher") is not None


def producer_started(raw: Any) -> bool:
    """Whether ``start()`` ran on an ``AIOKafkaProducer`` (its sender task exists then)."""
    sender = _read(raw, "_sender")
    return _read(sender, "sender_task") is not None


@dataclass(frozen=True)
class SubscriptionView:
    """What an ``AIOKafkaConsumer`` is subscribed to, read without changing it.

    Attributes:
        topics: Subscribed topics (for a pattern: those it matched so far), or ``None``
            when it is subscribed to nothing.
        pattern: The subscribed pattern, if any.
        manual: Partitions were assigned by hand (``assign()``): no group, no rebalance.
        listener: The ``ConsumerRebalanceListener`` the user passed to ``subscribe``.
    """

    topics: frozenset[str] | None
    pattern: re.Pattern[str] | None
    manual: bool
    listener: Any


def subscription_of(raw: Any) -> SubscriptionView:
    """The subscription of an ``AIOKafkaConsumer`` (``raw._subscription``)."""
    state = _read(raw, "_subscription")
    current = state.subscription
    topics = None if current is None else frozenset(current.topics)
    manual = current is not None and not state.partitions_auto_assigned()
    return SubscriptionView(topics, state.subscribed_pattern, manual, state.listener)


#: The connection settings an ``AIOKafkaClient`` keeps (constructor names, with ``_``).
CONNECTION_SETTINGS = (
    "bootstrap_servers",
    "client_id",
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_kerberos_service_name",
    "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider",
)


def connection_of(raw: Any) -> dict[str, Any]:
    """The connection settings of an ``AIOKafkaProducer``/``AIOKafkaConsumer`` you built.

    Request/reply opens small extra clients (the reply reader, the admin client, the
    responder's reply producer) that must reach the same cluster the same way; aiokafka
    keeps these settings on its ``AIOKafkaClient`` (``producer.client``,
    ``consumer._client``) only as private attributes.
    """
    client = getattr(raw, "client", None)
    if client is None:
        client = _read(raw, "_client")
    return {name: _read(client, f"_{name}") for name in CONNECTION_SETTINGS}
