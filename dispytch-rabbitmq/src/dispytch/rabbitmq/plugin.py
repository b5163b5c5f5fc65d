"""The ``rabbitmq`` transport's plugin registration (``amqp://`` and ``amqps://``).

aio-pika is imported only when a factory is called: discovering plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.plugins.hookspecs import hookimpl
from dispytch.plugins.records import TransportSpec
from dispytch.rabbitmq.options import RabbitMQOptions
from dispytch.transport import Capabilities

if TYPE_CHECKING:
    from dispytch.rabbitmq.consumer import RabbitMQConsumer
    from dispytch.rabbitmq.producer import RabbitMQProducer

#: What RabbitMQ consumers offer (``ordered_lanes`` with ``ordered=True``,
#: ``delayed_requeue`` unless ``delayed_requeue=False``).
CAPABILITIES = Capabilities(
    delivery="at-least-once",
    ordered_lanes=True,
    requeue=True,
    delayed_requeue=True,
    pause_lanes=True,
    lease_extension=False,
    request_reply=True,
)


def producer_from_url(url: str, **options: Any) -> RabbitMQProducer:
    """Build a :class:`~dispytch.rabbitmq.RabbitMQProducer` for ``amqp[s]://...``
    (:meth:`RabbitMQProducer.from_url <dispytch.rabbitmq.RabbitMQProducer.from_url>`)."""
    from dispytch.rabbitmq.producer import RabbitMQProducer

    return RabbitMQProducer.from_url(url, **options)


def consumer_from_url(url: str, **options: Any) -> RabbitMQConsumer:
    """Build a :class:`~dispytch.rabbitmq.RabbitMQConsumer` for ``amqp[s]://...``
    (:meth:`RabbitMQConsumer.from_url <dispytch.rabbitmq.RabbitMQConsumer.from_url>`)."""
    from dispytch.rabbitmq.consumer import RabbitMQConsumer

    return RabbitMQConsumer.from_url(url, **options)


@hookimpl
def dispytch_transports() -> list[TransportSpec]:
    """The RabbitMQ transport: confirmed publishing, acknowledged consuming."""
    from dispytch.rabbitmq.routes import RabbitMQEventRoute, RabbitMQEventSubscription

    return [
        TransportSpec(
            name="rabbitmq",
            schemes=("amqp", "amqps"),
            producer_factory=producer_from_url,
            consumer_factory=consumer_from_url,
            description=(
                "RabbitMQ via aio-pika: publisher confirms, persistent messages, ack after "
                "handling, broker DLX on reject; at-least-once"
            ),
            route_types=(RabbitMQEventRoute,),
            subscription_types=(RabbitMQEventSubscription,),
            capabilities=CAPABILITIES,
            options_model=RabbitMQOptions,
        )
    ]
