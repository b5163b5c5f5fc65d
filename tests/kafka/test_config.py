"""URLs, options, routes and plugin registration (no broker needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dispytch.errors import ConfigError
from dispytch.kafka import KafkaConfigError, KafkaEventRoute, KafkaEventSubscription
from dispytch.kafka.config import parse_kafka_url


def test_parse_url_servers_and_options() -> None:
    servers, opts = parse_kafka_url("kafka://a:9092,b:9093,c?acks=all&linger_ms=5")
    assert servers == "a:9092,b:9093,c:9092"
    assert opts == {"acks": "all", "linger_ms": "5"}


def test_parse_url_credentials_become_sasl_plain() -> None:
    _, opts = parse_kafka_url("kafka://svc%40x:s3cr%3At@broker:9094?security_protocol=SASL_SSL")
    assert opts["sasl_plain_username"] == "svc@x"
    assert opts["sasl_plain_password"] == "s3cr:t"
    assert opts["sasl_mechanism"] == "PLAIN"
    assert opts["security_protocol"] == "SASL_SSL"  # the query wins


@pytest.mark.parametrize(
    ("url", "match"),
    [("amqp://x", "is not a Kafka URL"), ("kafka://", "names no Kafka server")],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(KafkaConfigError, match=match):
        parse_kafka_url(url)


def test_producer_options_are_typed_and_checked() -> None:
    from dispytch.kafka import KafkaProducer

    p = KafkaProducer.from_url("kafka://h:1?linger_ms=7&enable_idempotence=on&acks=all")
    assert p._client_kwargs["linger_ms"] == 7
    assert p._client_kwargs["enable_idempotence"] is True
    assert p._client_kwargs["acks"] == "all"
    assert p._client_kwargs["bootstrap_servers"] == "h:1"
    assert p._client_kwargs["max_batch_size"] == 256 * 1024  # batch_bytes' default
    assert KafkaProducer.from_url("kafka://h:1?acks=-1").options.acks == -1
    with pytest.raises(ConfigError, match="option 'lingr_ms'. Did you mean 'linger_ms'"):
        KafkaProducer.from_url("kafka://h:1?lingr_ms=7")
    with pytest.raises(ConfigError, match="linger_ms='soon'"):
        KafkaProducer.from_url("kafka://h:1?linger_ms=soon")
    with pytest.raises(ConfigError, match="acks"):
        KafkaProducer.from_url("kafka://h:1?acks=5")
    with pytest.raises(KafkaConfigError, match="above max_request_size"):
        KafkaProducer.from_url("kafka://h:1?batch_bytes=2000000")


def test_one_boolean_vocabulary_for_urls_and_keywords() -> None:
    from dispytch.kafka import KafkaConsumer

    for text, value in [("true", True), ("on", True), ("1", True), ("no", False), ("off", False)]:
        assert KafkaConsumer.from_url(f"kafka://h?ordered={text}", group_id="g").ordered is value
    kw = KafkaConsumer.from_url("kafka://h?ordered=on", group_id="g", ordered=False)
    assert kw.ordered is False  # keywords win over the query
    with pytest.raises(ConfigError, match="ordered='maybe'"):
        KafkaConsumer.from_url("kafka://h?ordered=maybe", group_id="g")


def test_options_model_is_published_with_capabilities() -> None:
    from dispytch.kafka import KafkaOptions
    from dispytch.plugins import transport_for_url

    spec = transport_for_url("kafka://localhost:9092")
    assert spec.options_model is KafkaOptions
    caps = spec.capabilities
    assert caps.delivery == "at-least-once" and caps.ordered_lanes and caps.requeue
    assert caps.pause_lanes and caps.lease_extension
    assert caps.missing("delayed_requeue", "lease_extension") == ["delayed_requeue"]
    names = {o["name"] for o in KafkaOptions.describe()}
    assert {"group_id", "max_records", "linger_ms", "batch_bytes", "close_timeout"} <= names
    assert all(o["description"] for o in KafkaOptions.describe())


def test_tls_gets_a_default_context_and_objects_pass_through() -> None:
    import ssl

    from dispytch.kafka import KafkaConsumer

    c = KafkaConsumer.from_url("kafka://h:9093?security_protocol=SSL", group_id="g")
    assert isinstance(c._client_kwargs["ssl_context"], ssl.SSLContext)
    ctx = ssl.create_default_context()
    c2 = KafkaConsumer.from_url(
        "kafka://u:p@h:9093", group_id="g", ssl_context=ctx, security_protocol="SASL_SSL"
    )
    assert c2._client_kwargs["ssl_context"] is ctx
    assert c2._client_kwargs["sasl_plain_username"] == "u"
    assert c2._client_kwargs["security_protocol"] == "SASL_SSL"


def test_consumer_url_options() -> None:
    from dispytch.kafka import KafkaConsumer

    c = KafkaConsumer.from_url("kafka://h?group_id=g1&ordered=false&revoke_timeout=3")
    assert c.group_id == "g1"
    assert c.ordered is False
    assert c.revoke_timeout == 3.0
    assert c._client_kwargs["enable_auto_commit"] is False
    assert c._client_kwargs["auto_offset_reset"] == "earliest"
    assert c.max_records == 100  # small polls: few records alive at once
    assert KafkaConsumer.from_url("kafka://h?max_records=20", group_id="g").max_records == 20
    with pytest.raises(KafkaConfigError, match="enable_auto_commit=True would commit"):
        KafkaConsumer.from_url("kafka://h?enable_auto_commit=true", group_id="g")
    with pytest.raises(KafkaConfigError, match="enable_auto_commit=True would commit"):
        KafkaConsumer.from_url("kafka://h", group_id="g", enable_auto_commit=True)


def test_max_records_follows_max_in_flight_unless_set(caplog: pytest.LogCaptureFixture) -> None:
    from dispytch.kafka import KafkaConsumer
    from dispytch.transport import ReadAhead

    c = KafkaConsumer.from_url("kafka://h", group_id="g")
    assert isinstance(c, ReadAhead)
    c.configure(max_in_flight=8)
    assert c.max_records == 8
    c.configure(max_in_flight=1000)
    assert c.max_records == 100  # a poll never makes more than 100 records at once
    explicit = KafkaConsumer.from_url("kafka://h?max_records=50", group_id="g")
    with caplog.at_level("INFO", logger="dispytch.kafka"):
        explicit.configure(max_in_flight=8)
    assert explicit.max_records == 50
    assert "max_records=50 is above the dispatcher's max_in_flight=8" in caplog.text


async def test_wrapped_clients_keep_their_own_client_settings() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from dispytch.kafka import KafkaConsumer, KafkaProducer

    raw = AIOKafkaConsumer(bootstrap_servers="h:1", group_id="g", enable_auto_commit=False)
    with pytest.raises(KafkaConfigError, match="session_timeout_ms configure a client"):
        KafkaConsumer(raw, session_timeout_ms=3000)
    with pytest.raises(ConfigError, match="Did you mean 'commit_interval'"):
        KafkaConsumer(raw, comit_interval=0)
    with pytest.raises(KafkaConfigError, match="differs from the AIOKafkaConsumer's"):
        KafkaConsumer(raw, group_id="other")
    c = KafkaConsumer(raw, commit_interval=0, ordered=False)
    assert c.ordered is False and c.group_id == "g" and not c.owns_client
    assert KafkaConsumer(raw, owns_client=True).owns_client
    p = AIOKafkaProducer(bootstrap_servers="h:1")
    try:
        with pytest.raises(KafkaConfigError, match="batch_bytes configure a client"):
            KafkaProducer(p, batch_bytes=65536)
        assert KafkaProducer(p, delivery_timeout=2).delivery_timeout == 2.0
    finally:
        await p.stop()
        await raw.stop()


def test_consumer_subscription_groups_must_agree() -> None:
    from dispytch.kafka import KafkaConsumer

    c = KafkaConsumer.from_url("kafka://h")
    c.subscribe([KafkaEventSubscription(topic="a", group_id="billing")])
    assert c.group_id == "billing"
    with pytest.raises(KafkaConfigError, match="wants consumer group 'audit'"):
        c.subscribe([KafkaEventSubscription(topic="b", group_id="audit")])


def test_consumer_rejects_foreign_subscriptions() -> None:
    from dispytch.kafka import KafkaConsumer
    from dispytch.memory import MemoryEventRoute  # noqa: F401 - a route, not a subscription
    from dispytch.routes import EventSubscription

    class Other(EventSubscription):
        @property
        def route_pattern(self) -> str:
            return "x"

    c = KafkaConsumer.from_url("kafka://h", group_id="g")
    with pytest.raises(TypeError, match="cannot serve"):
        c.subscribe([Other()])


def test_pattern_subscriptions_become_one_regex() -> None:
    import re

    from dispytch.kafka.subscribing import subscription_target as _subscription_target
    from dispytch.routes import TopicSubscription

    topics, pattern = _subscription_target(
        [KafkaEventSubscription(topic="orders"), TopicSubscription(topic="user.{id}.events")]
    )
    assert topics == set()
    assert pattern is not None
    rx = re.compile(pattern)
    assert rx.match("orders") and rx.match("user.42.events")
    assert not rx.match("user.42.events.x") and not rx.match("ordersx")
    topics, pattern = _subscription_target([KafkaEventSubscription(topic="a.b")])
    assert topics == {"a.b"} and pattern is None


def test_routes() -> None:
    r = KafkaEventRoute(topic="user.{user_id}", key="user_id", partition=2)
    assert r.is_dynamic
    assert r.address_fields == ("topic",)

    class Ev:
        user_id = 7

    resolved = r.resolve(Ev())
    assert resolved.topic == "user.7" and resolved.partition == 2
    assert resolved.key_for(Ev()) == b"7"
    with pytest.raises(ValueError, match="needs a topic"):
        KafkaEventRoute(topic="")
    with pytest.raises(ValueError, match="partition is an int >= 0"):
        KafkaEventRoute(topic="t", partition=-1)
    with pytest.raises(ValueError, match="needs a topic"):
        KafkaEventSubscription(topic="")
    assert KafkaEventSubscription(topic="a.{x}").compiled.names == ("x",)


def test_plugin_registration_does_not_import_aiokafka() -> None:
    code = (
        "import sys\n"
        "from dispytch.plugins import transport_for_url\n"
        "spec = transport_for_url('kafka://localhost:9092')\n"
        "import dispytch.kafka as k\n"
        "assert spec.name == 'kafka' and spec.schemes == ('kafka',), spec\n"
        "assert k.KafkaEventRoute in spec.route_types\n"
        "assert 'aiokafka' not in sys.modules, 'discovery imported aiokafka'\n"
        "p = spec.producer_factory('kafka://localhost:9092')\n"
        "assert 'aiokafka' in sys.modules\n"
        "print(type(p).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "KafkaProducer"


def test_wrapping_checks_the_client() -> None:
    from dispytch.kafka import KafkaConsumer, KafkaProducer

    with pytest.raises(TypeError, match="wraps an aiokafka.AIOKafkaProducer"):
        KafkaProducer(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wraps an aiokafka.AIOKafkaConsumer"):
        KafkaConsumer(object())  # type: ignore[arg-type]


def test_one_url_configures_both_sides() -> None:
    """Consumer options in a producer's URL (and the other way round) are left out, so an
    emitter and a dispatcher can share one URL; a typo still fails."""
    from dispytch.kafka import KafkaConsumer, KafkaProducer

    url = "kafka://h:1?group_id=g1&ordered=false&linger_ms=7&delivery_timeout=3&batch_bytes=65536"
    p = KafkaProducer.from_url(url)
    assert p._client_kwargs["linger_ms"] == 7
    assert p._client_kwargs["max_batch_size"] == 65536
    assert "group_id" not in p._client_kwargs
    assert p.delivery_timeout == 3.0
    c = KafkaConsumer.from_url(url)
    assert c.group_id == "g1"
    assert "linger_ms" not in c._client_kwargs
    with pytest.raises(ConfigError, match="Unknown Kafka option 'group_idd'"):
        KafkaProducer.from_url("kafka://h:1?group_idd=g1")
    with pytest.raises(KafkaConfigError, match="'group_id' is not an option of the Kafka producer"):
        KafkaProducer.from_url("kafka://h:1", group_id="g1")
