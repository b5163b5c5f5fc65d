"""The ``rabbitmq`` transport's plugin registration (``amqp://`` and ``amqps://``).

aio-pika is imported only when a factory is called: discovering plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.plugins.hookspecs import hookimpl
from dispytch.plugins.records import TransportSpec

if TYPE_CHECKING:
    from dispytch.rabbitmq.consumer import RabbitMQConsumer
    from dispytch.rabbitmq.producer import RabbitMQProducer

#: URL query parameters Dispytch reads itself (the rest go to aio-pika).
PRODUCER_URL_OPTIONS = ("topic_exchange", "timeout", "persistent", "mandatory")
CONSUMER_URL_OPTIONS = ("queue", "prefetch_count", "topic_exchange", "ordered")

_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _convert(name: str, value: str) -> Any:
    if name in ("timeout",):
        return float(value)
    if name == "prefetch_count":
        return int(value)
    if name in ("persistent", "mandatory", "ordered"):
        try:
            return _BOOLS[value.lower()]
        except KeyError:
            raise ValueError(f"URL option {name}={value!r}: use true or false.") from None
    return value


def producer_from_url(url: str, **options: Any) -> RabbitMQProducer:
    """Build a :class:`~dispytch.rabbitmq.RabbitMQProducer` for ``amqp[s]://...``.

    Query parameters ``topic_exchange``, ``timeout``, ``persistent`` and ``mandatory`` set
    the options of the same name (keyword ``options`` win); others go to aio-pika.
    """
    from dispytch.rabbitmq._common import split_url
    from dispytch.rabbitmq.producer import RabbitMQProducer

    clean, own = split_url(url, PRODUCER_URL_OPTIONS)
    for k, v in own.items():
        options.setdefault(k, _convert(k, v))
    return RabbitMQProducer(url=clean, **options)


def consumer_from_url(url: str, **options: Any) -> RabbitMQConsumer:
    """Build a :class:`~dispytch.rabbitmq.RabbitMQConsumer` for ``amqp[s]://...``.

    Query parameters ``queue``, ``prefetch_count``, ``topic_exchange`` and ``ordered`` set
    the options of the same name (keyword ``options`` win); others go to aio-pika. A
    ``group`` option (what other transports call the consumer group) names the queue.
    """
    from dispytch.rabbitmq._common import split_url
    from dispytch.rabbitmq.consumer import RabbitMQConsumer

    clean, own = split_url(url, (*CONSUMER_URL_OPTIONS, "group"))
    if "group" in own:
        own.setdefault("queue", own.pop("group"))
    if "group" in options:
        options.setdefault("queue", options.pop("group"))
    for k, v in own.items():
        options.setdefault(k, _convert(k, v))
    return RabbitMQConsumer(url=clean, **options)


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
        )
    ]
