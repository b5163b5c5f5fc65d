"""Dispytch Kafka transport (aiokafka).

Routes and subscriptions are importable without aiokafka being imported;
:class:`KafkaProducer`, :class:`KafkaConsumer` and :class:`KafkaMessage` load it on first
access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.kafka.config import KafkaConfigError, KafkaOptions
from dispytch.kafka.routes import KafkaEventRoute, KafkaEventSubscription

if TYPE_CHECKING:
    from dispytch.kafka.consumer import KafkaConsumer
    from dispytch.kafka.message import KafkaMessage
    from dispytch.kafka.producer import KafkaProducer

__all__ = [
    "KafkaConfigError",
    "KafkaConsumer",
    "KafkaEventRoute",
    "KafkaEventSubscription",
    "KafkaMessage",
    "KafkaOptions",
    "KafkaProducer",
]


def __getattr__(name: str) -> Any:
    if name == "KafkaProducer":
        from dispytch.kafka.producer import KafkaProducer

        return KafkaProducer
    if name == "KafkaConsumer":
        from dispytch.kafka.consumer import KafkaConsumer

        return KafkaConsumer
    if name == "KafkaMessage":
        from dispytch.kafka.message import KafkaMessage

        return KafkaMessage
    raise AttributeError(f"module 'dispytch.kafka' has no attribute {name!r}")
