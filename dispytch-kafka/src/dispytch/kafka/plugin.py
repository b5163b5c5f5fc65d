"""The ``kafka://`` transport, registered through Dispytch's plugin hook.

Discovery imports this module; aiokafka is imported only when a factory is called.
"""

from __future__ import annotations

from typing import Any

from dispytch.plugins import TransportSpec, hookimpl


def _producer(url: str, **options: Any) -> Any:
    from dispytch.kafka.producer import producer_from_url

    return producer_from_url(url, **options)


def _consumer(url: str, **options: Any) -> Any:
    from dispytch.kafka.consumer import consumer_from_url

    return consumer_from_url(url, **options)


@hookimpl
def dispytch_transports() -> list[TransportSpec]:
    """The Kafka transport (aiokafka), at-least-once with ordered per-partition commits."""
    from dispytch.kafka.config import CAPABILITIES, KafkaOptions
    from dispytch.kafka.routes import KafkaEventRoute, KafkaEventSubscription

    return [
        TransportSpec(
            name="kafka",
            schemes=("kafka",),
            producer_factory=_producer,
            consumer_factory=_consumer,
            description=(
                "Apache Kafka via aiokafka; at-least-once, commits after handling, "
                "order kept per partition"
            ),
            route_types=(KafkaEventRoute,),
            subscription_types=(KafkaEventSubscription,),
            capabilities=CAPABILITIES,
            options_model=KafkaOptions,
        )
    ]
