"""The Redis plugin: registration, URL schemes, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dispytch.errors import ConfigError
from dispytch.plugins import transport_for_url, transports
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamProducer,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from redis.asyncio import Redis


def test_schemes_select_pubsub_or_streams() -> None:
    table = transports()
    assert table["redis"].name == table["rediss"].name == "redis"
    assert table["redis+streams"].name == table["rediss+streams"].name == "redis-streams"
    assert "at-most-once" in table["redis"].description
    assert "at-least-once" in table["redis+streams"].description
    assert RedisEventRoute in table["redis"].route_types
    assert RedisEventSubscription in table["redis"].subscription_types
    assert RedisStreamRoute in table["redis+streams"].route_types
    assert RedisStreamSubscription in table["redis+streams"].subscription_types


async def test_factories_build_what_the_scheme_says() -> None:
    pubsub = transport_for_url("redis://127.0.0.1:6379/0")
    producer = pubsub.producer_factory("redis://127.0.0.1:6379/0?warn_no_receivers=false")
    consumer = pubsub.consumer_factory("redis://127.0.0.1:6379/0", ordered=True)
    assert type(producer) is RedisProducer
    assert producer.warn_no_receivers is False
    assert type(consumer) is RedisConsumer

    streams = transport_for_url("redis+streams://127.0.0.1:6379/0")
    s_producer = streams.producer_factory("redis+streams://127.0.0.1:6379/0")
    s_consumer = streams.consumer_factory(
        "redis+streams://127.0.0.1:6379/0?group=audit&max_deliveries=5", min_idle_time=2
    )
    assert type(s_producer) is RedisStreamProducer
    assert type(s_consumer) is RedisStreamConsumer
    assert (s_consumer.group, s_consumer.max_deliveries, s_consumer.min_idle_time) == (
        "audit",
        5,
        2,
    )
    for closable in (producer, s_producer):
        await closable.stop()
    await consumer.close()
    await s_consumer.close()


def test_bad_url_options_are_reported() -> None:
    spec = transport_for_url("redis+streams://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"batch_size='x': Input should be a valid integer"):
        spec.consumer_factory("redis+streams://127.0.0.1:6379/0?batch_size=x")
    with pytest.raises(ConfigError, match=r"Unknown RedisStream option 'bach_size'.*batch_size"):
        spec.consumer_factory("redis+streams://127.0.0.1:6379/0", bach_size=3)


def test_specs_declare_capabilities_and_options() -> None:
    from dispytch.redis._options import RedisOptions, RedisStreamOptions

    pubsub, streams = transports()["redis"], transports()["redis+streams"]
    assert pubsub.capabilities.delivery == "at-most-once"
    assert pubsub.capabilities.requeue is False
    assert (
        streams.capabilities.missing(
            "delivery", "requeue", "delayed_requeue", "pause_lanes", "lease_extension"
        )
        == []
    )
    assert pubsub.options_model is RedisOptions
    assert streams.options_model is RedisStreamOptions
    # What each consumer declares agrees with its spec.
    assert RedisConsumer(Redis()).capabilities.delivery == "at-most-once"
    ordered = RedisStreamConsumer(Redis(), ordered=True).capabilities
    assert ordered.ordered_lanes and ordered.lease_extension and ordered.delayed_requeue
    assert RedisStreamConsumer(Redis()).capabilities.ordered_lanes is False


def test_discovery_and_routes_do_not_import_redis() -> None:
    code = (
        "import sys\n"
        "from dispytch.plugins import transports\n"
        "assert 'redis+streams' in transports()\n"
        "from dispytch.redis import RedisEventRoute, RedisStreamRoute\n"
        "RedisEventRoute(channel='c'); RedisStreamRoute(stream='s')\n"
        "assert 'redis' not in sys.modules, 'discovery imported redis'\n"
        "from dispytch.redis import RedisProducer\n"
        "assert 'redis' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_unknown_attribute() -> None:
    import dispytch.redis

    with pytest.raises(AttributeError, match="has no attribute 'RedisThing'"):
        dispytch.redis.RedisThing  # noqa: B018
