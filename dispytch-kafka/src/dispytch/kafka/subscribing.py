"""Subscribing an aiokafka consumer to what the handlers consume.

Only public aiokafka calls change a consumer (``subscribe`` before ``start``); what it is
already subscribed to is read through :mod:`dispytch.kafka._compat`. A consumer that was
started by its user is never re-subscribed: Dispytch checks that it covers the handlers'
topics and consumes it as it is.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from dispytch.kafka import _compat
from dispytch.kafka.config import KafkaConfigError
from dispytch.kafka.routes import KafkaEventSubscription
from dispytch.routes import EventSubscription, TopicSubscription

log = logging.getLogger("dispytch.kafka")


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Flushes commits of revoked partitions; then calls a listener the user had set."""

    def __init__(
        self,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[set[TopicPartition]], None],
        chained: Any = None,
    ) -> None:
        self.on_revoked = on_revoked
        self.on_assigned = on_assigned
        self.chained = chained

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        await self.on_revoked(revoked)
        if self.chained is not None:
            res = self.chained.on_partitions_revoked(revoked)
            if asyncio.iscoroutine(res):
                await res

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        self.on_assigned(assigned)
        if self.chained is not None:
            res = self.chained.on_partitions_assigned(assigned)
            if asyncio.iscoroutine(res):
                await res


def subscription_target(subscriptions: Sequence[EventSubscription]) -> tuple[set[str], str | None]:
    """Topics to subscribe to, or one regular expression when any subscription is a pattern.

    Raises:
        TypeError: A subscription the Kafka transport cannot serve.
    """
    statics: set[str] = set()
    regexes: list[str] = []
    for sub in subscriptions:
        topic = getattr(sub, "topic", None)
        if not isinstance(sub, KafkaEventSubscription | TopicSubscription) or not isinstance(
            topic, str
        ):
            raise TypeError(
                f"The Kafka consumer cannot serve {sub!r}. Use "
                "KafkaEventSubscription(topic=...) or TopicSubscription(topic=...)."
            )
        pattern = sub.compiled
        if pattern.is_static:
            statics.add(topic)
        else:
            regexes.append(pattern.regex)
    if not regexes:
        return statics, None
    parts = [f"(?:{rx})" for rx in regexes] + [f"(?:^{re.escape(t)}$)" for t in sorted(statics)]
    return set(), "|".join(parts)


def subscribe_unstarted(
    raw: Any, subscriptions: Sequence[EventSubscription], listener: RebalanceListener
) -> None:
    """Subscribe an unstarted consumer to its own topics plus the handlers' (public
    ``subscribe``), with ``listener`` chaining the listener the user had passed.

    Raises:
        KafkaConfigError: Nothing to consume at all.
    """
    view = _compat.subscription_of(raw)
    if view.manual:
        if subscriptions:
            log.debug("Kafka consumer uses a manual assignment; subscriptions unused")
        return
    topics, pattern = subscription_target(subscriptions)
    user_pattern = view.pattern
    user_topics = set() if view.topics is None or user_pattern else set(view.topics)
    if user_pattern is not None:
        extra = [pattern] if pattern else []
        extra += [f"(?:^{re.escape(t)}$)" for t in sorted(topics)]
        pattern = "|".join([f"(?:{user_pattern.pattern})", *extra])
    if pattern is None and not (topics or user_topics):
        raise KafkaConfigError(
            "The Kafka consumer is subscribed to nothing and no handler names a topic. "
            "Pass topics to AIOKafkaConsumer(...) or register handlers."
        )
    chained = view.listener
    if isinstance(chained, RebalanceListener):
        chained = chained.chained
    listener.chained = chained
    if pattern is not None and user_topics:
        raise KafkaConfigError(
            f"The AIOKafkaConsumer is subscribed to topics {sorted(user_topics)}, but handlers "
            "consume a topic pattern, and aiokafka cannot switch an unstarted consumer from "
            "topics to a pattern.\nCreate it without topics (Dispytch subscribes it to "
            "what the handlers consume), or subscribe it to a pattern yourself."
        )
    if pattern is not None:
        raw.subscribe(pattern=pattern, listener=listener)
    else:
        raw.subscribe(topics=sorted(user_topics | topics), listener=listener)


def check_started(raw: Any, subscriptions: Sequence[EventSubscription]) -> None:
    """Check that a consumer its user already started covers the handlers' topics.

    It is consumed as it is (re-subscribing a running consumer would rebalance the group
    and replace the user's listener).

    Raises:
        KafkaConfigError: Subscribed to nothing, or missing a topic a handler consumes.
    """
    view = _compat.subscription_of(raw)
    if view.manual:
        return
    if view.topics is None and view.pattern is None:
        raise KafkaConfigError(
            "The AIOKafkaConsumer was started without a subscription.\n"
            "Pass topics to AIOKafkaConsumer(...), or hand Dispytch an unstarted consumer."
        )
    if view.pattern is not None:
        return
    topics, pattern = subscription_target(subscriptions)
    current = view.topics or frozenset()
    missing = sorted(topics - current)
    if missing:
        raise KafkaConfigError(
            f"The running AIOKafkaConsumer is not subscribed to {missing}, which handlers "
            "consume.\nAdd them to its topics, or hand Dispytch an unstarted consumer."
        )
    if pattern is not None:
        log.warning(
            "Handlers use topic patterns, but the running AIOKafkaConsumer is subscribed "
            "to fixed topics %s only",
            sorted(current),
        )
