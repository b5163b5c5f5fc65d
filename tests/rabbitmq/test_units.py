"""RabbitMQ routes, subscriptions, options and plugin wiring: no broker needed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
from dispytch import EventBase, EventRoute, TopicRoute
from dispytch.errors import ConfigError
from dispytch.plugins import transport_for_url
from dispytch.rabbitmq import (
    DEFAULT_TOPIC_EXCHANGE,
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQExchange,
    RabbitMQProducer,
)
from dispytch.rabbitmq._codec import text_headers
from dispytch.rabbitmq._common import redact
from dispytch.rabbitmq._delay import arguments as delay_arguments
from dispytch.rabbitmq._delay import bucket_ms
from dispytch.rabbitmq._delay import queue_name as delay_queue_name
from dispytch.rabbitmq.options import RabbitMQOptions, split_url
from dispytch.rabbitmq.plugin import consumer_from_url, producer_from_url
from dispytch.transport import Message


class Signup(EventBase):
    tenant: str
    user_id: int


def test_route_resolves_dynamic_exchange_and_routing_key() -> None:
    route = RabbitMQEventRoute(exchange="{tenant}.events", routing_key="user.{user_id}.created")
    assert route.is_dynamic
    resolved = route.resolve(Signup(tenant="acme", user_id=7))
    assert resolved.exchange == "acme.events"
    assert resolved.routing_key == "user.7.created"
    assert resolved.address == "acme.events/user.7.created"
    assert RabbitMQEventRoute(routing_key="q").address == "(default)/q"


def test_route_with_missing_field_says_which() -> None:
    route = RabbitMQEventRoute(exchange="x", routing_key="user.{email}")
    with pytest.raises(ValueError, match="needs the field 'email'"):
        route.resolve(Signup(tenant="a", user_id=1))


def message(route: str, **metadata: object) -> Message:
    return Message(b"{}", route=route, metadata=metadata)


def test_subscription_pattern_and_narrowing() -> None:
    sub = RabbitMQEventSubscription(exchange="orders", queue="billing", routing_key="o.{id}.*")
    assert sub.route_pattern == "o.{id}.*"
    assert sub.compiled.match("o.42.paid") == {"id": "42"}
    assert sub.compiled.amqp == "o.*.*"
    assert sub.accepts(message("o.1.x", exchange="orders", queue="billing"))
    assert not sub.accepts(message("o.1.x", exchange="other", queue="billing"))
    assert not sub.accepts(message("o.1.x", exchange="orders", queue="shipping"))


def test_subscription_defaults_accept_anything() -> None:
    sub = RabbitMQEventSubscription()
    assert sub.route_pattern == "#"
    assert sub.compiled.match("") == {}  # fanout and headers exchanges: empty keys
    assert sub.compiled.match("a.b.c") == {}
    assert sub.accepts(message("x", exchange="any", queue="any"))
    assert RabbitMQEventSubscription.filters_messages


def test_subscriptions_with_binding_arguments_are_hashable_and_comparable() -> None:
    a = RabbitMQEventSubscription(exchange="h", binding_arguments={"x-match": "all"})
    b = RabbitMQEventSubscription(exchange="h", binding_arguments={"x-match": "all"})
    assert a == b
    assert hash(a) == hash(b)


def test_exchange_declaration_validates() -> None:
    assert RabbitMQExchange(name="user.events", type="topic").durable
    with pytest.raises(ValueError, match="type 'queue'.*'direct', 'topic', 'fanout', 'headers'"):
        RabbitMQExchange(name="x", type="queue")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'amq.topic'.*belong to the broker"):
        RabbitMQExchange(name="amq.topic", type="topic")
    with pytest.raises(ValueError, match="belong to the broker"):
        RabbitMQExchange(name="", type="direct")


def test_producer_construction_errors() -> None:
    with pytest.raises(TypeError, match=r"RabbitMQProducer\(\[\]\) has no exchange"):
        RabbitMQProducer([])
    with pytest.raises(TypeError, match="cannot publish through"):
        RabbitMQProducer([object()])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="timeout=0"):
        RabbitMQProducer.from_url("amqp://localhost/", timeout=0)


def test_producer_rejects_foreign_routes() -> None:
    from dispytch.errors import EmitError

    @dataclass(frozen=True, kw_only=True)
    class StreamRoute(EventRoute):
        stream: str

    producer = RabbitMQProducer.from_url("amqp://localhost/")
    assert producer._address(TopicRoute(topic="a.b")) == (DEFAULT_TOPIC_EXCHANGE, "a.b", None)
    with pytest.raises(EmitError, match="(?s)cannot publish to .*StreamRoute.*RabbitMQEventRoute"):
        producer._address(StreamRoute(stream="s"))


def test_consumer_construction_errors() -> None:
    with pytest.raises(TypeError, match="(?s)needs aio-pika queues.*Pass one of them"):
        RabbitMQConsumer()
    with pytest.raises(ConfigError, match="prefetch_count=0"):
        RabbitMQConsumer.from_url("amqp://localhost/", queue="q", prefetch_count=0)
    with pytest.raises(TypeError, match="cannot consume from"):
        RabbitMQConsumer(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="queue and group|name two queues"):
        RabbitMQConsumer.from_url("amqp://localhost/?queue=a", group="b").queue_name


def test_prefetch_follows_max_in_flight_unless_explicit(caplog: pytest.LogCaptureFixture) -> None:
    follows = RabbitMQConsumer.from_url("amqp://localhost/", queue="q")
    assert follows.prefetch_count == 64  # the dispatcher's default max_in_flight
    follows.configure(max_in_flight=8)
    assert follows.prefetch_count == 8
    assert "differs" not in caplog.text
    explicit = RabbitMQConsumer.from_url("amqp://localhost/?prefetch_count=100", queue="q")
    explicit.configure(max_in_flight=8)
    explicit.configure(max_in_flight=8)
    assert explicit.prefetch_count == 100
    assert caplog.text.count("prefetch_count=100 differs from the dispatcher's") == 1


def test_url_options_are_split_from_aio_pika_options() -> None:
    clean, own = split_url("amqp://u:p@h:5672/vh?queue=billing&heartbeat=30", ("queue",))
    assert own == {"queue": "billing"}
    assert clean == "amqp://u:p@h:5672/vh?heartbeat=30"
    with pytest.raises(ConfigError, match="not a RabbitMQ URL.*\n.*amqp://user:password@host"):
        split_url("redis://localhost", ())
    with pytest.raises(
        ConfigError,
        match="Unknown RabbitMQ URL option 'prefech_count'.*Did you mean 'prefetch_count'",
    ):
        split_url("amqp://h/?prefech_count=3", ("prefetch_count",))
    assert redact("amqp://guest:secret@h/") == "amqp://guest:***@h/"
    assert redact("amqp://h/") == "amqp://h/"


def test_plugin_factories_read_url_options() -> None:
    consumer = consumer_from_url("amqp://localhost/?queue=billing&prefetch_count=7&ordered=yes")
    assert consumer.queue_name == "billing"
    assert consumer.prefetch_count == 7
    assert consumer.ordered is True
    assert consumer.capabilities.ordered_lanes
    grouped = consumer_from_url("amqps://localhost/", group="shipping")
    assert grouped.queue_name == "shipping"
    producer = producer_from_url("amqp://localhost/?timeout=2.5&persistent=off&queue=ignored")
    assert producer.timeout == 2.5
    assert producer.persistent is False
    with pytest.raises(ConfigError, match="mandatory='maybe'"):
        producer_from_url("amqp://localhost/?mandatory=maybe")
    with pytest.raises(ConfigError, match="prefetch_count is not an option of this side"):
        producer_from_url("amqp://localhost/", prefetch_count=3)


def test_options_model_is_published_with_capabilities() -> None:
    spec = transport_for_url("amqp://localhost/")
    assert spec.options_model is RabbitMQOptions
    names = {o["name"] for o in RabbitMQOptions.describe()}
    assert {"queue", "prefetch_count", "ordered", "timeout", "mandatory"} <= names
    caps = spec.capabilities
    assert caps.delivery == "at-least-once"
    assert caps.requeue and caps.pause_lanes and caps.ordered_lanes
    assert caps.request_reply  # direct reply-to (tests/rabbitmq/test_request_reply.py)
    assert caps.missing("delayed_requeue", "lease_extension", "request_reply") == [
        "lease_extension",
    ]
    unordered = RabbitMQConsumer.from_url("amqp://localhost/", queue="q")
    assert not unordered.capabilities.ordered_lanes
    assert unordered.capabilities.delayed_requeue  # delay queues: on by default
    off = RabbitMQConsumer.from_url("amqp://localhost/?delayed_requeue=off", queue="q")
    assert not off.capabilities.delayed_requeue
    assert not RabbitMQConsumer.from_url(
        "amqp://localhost/", queue="q", delayed_requeue=False
    ).capabilities.delayed_requeue


def test_delay_buckets_are_never_shorter_and_at_most_a_fifth_longer() -> None:
    for ms in [*range(1, 3000), 10_000, 59_999, 86_400_000]:
        bucket = bucket_ms(ms / 1000)
        assert ms <= bucket <= ms * 2**0.25 + 1, ms  # the next bucket, rounded up to a ms
    assert bucket_ms(0.0001) == 1
    assert len({bucket_ms(d / 1000) for d in range(100, 10_001)}) == 28  # few queues
    with pytest.raises(ValueError, match="positive number of seconds"):
        bucket_ms(0)
    with pytest.raises(ValueError, match="longer than RabbitMQ's message TTL allows"):
        bucket_ms(50 * 86400)


def test_delay_queue_names_and_arguments() -> None:
    assert delay_queue_name("billing", 1024) == "dispytch.delay.1024ms.billing"
    # A server-named queue's delay queue is not in the reserved amq. namespace.
    assert delay_queue_name("amq.gen-abc", 7).startswith("dispytch.delay.7ms.amq.gen-abc")
    long = delay_queue_name("q" * 250, 1024)
    assert len(long.encode()) <= 255 and long != delay_queue_name("q" * 251, 1024)
    assert delay_arguments("billing", 1024) == {
        "x-message-ttl": 1024,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "billing",
        "x-expires": 1024 + 60_000,
    }
    assert delay_arguments("billing", 120_000)["x-expires"] == 240_000


def test_plugin_serves_amqp_and_amqps() -> None:
    for url in ("amqp://localhost/", "amqps://localhost/"):
        spec = transport_for_url(url)
        assert spec.name == "rabbitmq"
        assert RabbitMQEventRoute in spec.route_types
        assert RabbitMQEventSubscription in spec.subscription_types


def test_discovery_and_routes_do_not_import_aio_pika() -> None:
    code = (
        "import sys\n"
        "from dispytch.plugins import transport_for_url\n"
        "from dispytch.rabbitmq import RabbitMQEventRoute, RabbitMQEventSubscription\n"
        "transport_for_url('amqp://localhost/')\n"
        "assert 'aio_pika' not in sys.modules, 'aio_pika imported'\n"
        "assert 'aiormq' not in sys.modules, 'aiormq imported'\n"
        "from dispytch.rabbitmq import RabbitMQProducer\n"
        "assert 'aio_pika' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_headers_become_text() -> None:
    assert text_headers(None) == {}
    assert text_headers({"a": "x", "b": b"y", "c": 3, "d": [1, 2]}) == {
        "a": "x",
        "b": "y",
        "c": "3",
        "d": "[1, 2]",
    }


def test_request_expiration_is_the_deadline_plus_the_grace() -> None:
    import time

    from dispytch.rabbitmq.producer import EXPIRED_GRACE, _expiration

    value = _expiration(f"{time.time() + 5:.6f}")
    assert value is not None
    assert abs(int(value) - (5 + EXPIRED_GRACE) * 1000) < 1000
    assert _expiration(f"{time.time() - 3600:.6f}") == "1"  # long past: dropped at once
    assert _expiration(None) is None
    assert _expiration("not a number") is None


def test_a_dead_letter_of_undecodable_header_values_can_be_encoded() -> None:
    """Long strings that are not UTF-8 arrive as ``bytes`` (pamqp cannot encode those):
    the dead-letter copy carries the same bytes as AMQP byte arrays, nested ones too."""
    from dispytch.rabbitmq import _codec
    from pamqp import commands as pcommands
    from pamqp import frame as pframe
    from pamqp import header as pheader

    bad = b"\xff\xfe-not-utf8"
    original = pcommands.Basic.Properties(
        headers={"tenant": bad, "nested": {"deep": [bad, "ok"]}, "plain": "text"}
    )
    props = _codec.dead_letter_properties(
        original, ValueError("boom"), route="r.1", queue="q", exchange="ex"
    )
    headers = props.headers
    assert headers is not None
    assert headers["tenant"] == bytearray(bad)
    assert headers["nested"] == {"deep": [bytearray(bad), "ok"]}
    assert headers["plain"] == "text"
    assert headers["dispytch-error-message"] == "boom"
    wire = pframe.marshal(pheader.ContentHeader(0, 3, props), 1)  # encodes, no TypeError
    assert bad in wire
