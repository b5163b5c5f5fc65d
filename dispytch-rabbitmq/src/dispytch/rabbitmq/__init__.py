"""Dispytch's RabbitMQ transport (aio-pika).

Routes and subscriptions import without aio-pika; :class:`RabbitMQProducer` and
:class:`RabbitMQConsumer` load it on first access, so declaring events and discovering
plugins stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.rabbitmq.routes import (
    DEFAULT_TOPIC_EXCHANGE,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQExchange,
)

if TYPE_CHECKING:
    from dispytch.rabbitmq.consumer import RabbitMQConsumer
    from dispytch.rabbitmq.producer import RabbitMQProducer

__all__ = [
    "DEFAULT_TOPIC_EXCHANGE",
    "RabbitMQConsumer",
    "RabbitMQEventRoute",
    "RabbitMQEventSubscription",
    "RabbitMQExchange",
    "RabbitMQProducer",
]


def __getattr__(name: str) -> Any:
    if name == "RabbitMQProducer":
        from dispytch.rabbitmq.producer import RabbitMQProducer

        return RabbitMQProducer
    if name == "RabbitMQConsumer":
        from dispytch.rabbitmq.consumer import RabbitMQConsumer

        return RabbitMQConsumer
    raise AttributeError(f"module 'dispytch.rabbitmq' has no attribute {name!r}")
