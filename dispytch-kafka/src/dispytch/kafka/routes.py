"""Kafka routes and subscriptions (no aiokafka import: plugin discovery stays cheap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dispytch.routes import EventRoute, EventSubscription


@dataclass(frozen=True, kw_only=True)
class KafkaEventRoute(EventRoute):
    """Where an event is published on Kafka.

    Example::

        class OrderPlaced(EventBase):
            __route__ = KafkaEventRoute(topic="orders.{region}", key="order_id")

    Attributes:
        topic: The topic; ``{field}`` placeholders are filled from the event when it is
            emitted (dynamic topics).
        partition: Publish to this partition instead of letting the key choose one.
            Leave it ``None`` to keep Kafka's key hashing (same key, same partition, so
            per-key order holds).
        key: Inherited: the name of an event field, or a callable of the event, whose
            value becomes the Kafka message key.
        headers: Inherited: static headers sent with every event on this route.
    """

    topic: str
    partition: int | None = None

    address_fields: ClassVar[tuple[str, ...]] = ("topic",)

    def __post_init__(self) -> None:
        if not self.topic:
            raise ValueError("KafkaEventRoute needs a topic: KafkaEventRoute(topic='orders').")
        if self.partition is not None and (
            isinstance(self.partition, bool)
            or not isinstance(self.partition, int)
            or self.partition < 0
        ):
            raise ValueError(
                f"KafkaEventRoute(partition={self.partition!r}): a partition is an int >= 0, "
                "or None to let the key choose it."
            )


@dataclass(frozen=True, kw_only=True)
class KafkaEventSubscription(EventSubscription):
    """What a handler consumes from Kafka.

    Example::

        @router.handler(KafkaEventSubscription(topic="user.{user_id}.events"))
        async def on_user_event(event: Event[UserEvent], user_id: int): ...

    Attributes:
        topic: A topic name, or a pattern with ``{name}`` segments, ``*`` or ``#``. A
            pattern becomes an aiokafka pattern subscription (a regular expression over
            the cluster's topic names, re-checked as topics appear), and named segments
            are injected into the handler.
        group_id: The consumer group. Optional: when the consumer was built without a
            ``group_id``, it takes it from its subscriptions; all subscriptions of one
            consumer must agree, since one Kafka consumer is a member of one group.
    """

    topic: str
    group_id: str | None = None

    def __post_init__(self) -> None:
        if not self.topic:
            raise ValueError(
                "KafkaEventSubscription needs a topic: KafkaEventSubscription(topic='orders')."
            )

    @property
    def route_pattern(self) -> str:
        return self.topic
