"""Every aiokafka internal that ``dispytch.kafka._compat`` reads, checked against the
installed aiokafka: an upgrade that renames or removes one fails here, loudly."""

from __future__ import annotations

import re

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from dispytch.kafka import _compat


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: object) -> None: ...

    async def on_partitions_assigned(self, assigned: object) -> None: ...


def test_a_missing_internal_is_a_loud_error() -> None:
    with pytest.raises(RuntimeError, match="has no attribute '_closed': this aiokafka version"):
        _compat.client_closed(object())


async def test_consumer_constructor_fields() -> None:
    raw = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id="g")
    plain = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", enable_auto_commit=False)
    try:
        assert _compat.consumer_auto_commit(raw) is True
        assert _compat.consumer_auto_commit(plain) is False
        assert _compat.consumer_group_id(raw) == "g"
        assert _compat.consumer_group_id(plain) is None
        assert _compat.consumer_started(raw) is False
        assert _compat.client_closed(raw) is False
        assert _compat.consumer_max_poll_interval(raw) == 300.0  # aiokafka's default
        short = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", max_poll_interval_ms=1500)
        assert _compat.consumer_max_poll_interval(short) == 1.5
        await short.stop()
    finally:
        await raw.stop()
        await plain.stop()
    assert _compat.client_closed(raw) is True


async def test_subscription_views() -> None:
    topics, pattern, manual = (
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id="g") for _ in range(3)
    )
    try:
        view = _compat.subscription_of(topics)
        assert view.topics is None and view.pattern is None and not view.manual
        listener = _Listener()
        topics.subscribe(topics=["a", "b"], listener=listener)
        view = _compat.subscription_of(topics)
        assert view.topics == {"a", "b"} and view.pattern is None
        assert view.listener is listener and not view.manual
        pattern.subscribe(pattern="x\\..*")
        view = _compat.subscription_of(pattern)
        assert isinstance(view.pattern, re.Pattern) and view.pattern.pattern == "x\\..*"
        assert view.listener is None
        manual.assign([TopicPartition("a", 0)])
        assert _compat.subscription_of(manual).manual
    finally:
        for raw in (topics, pattern, manual):
            await raw.stop()


@pytest.mark.broker
async def test_producer_lifecycle_is_read_from_the_client(kafka_bootstrap: str) -> None:
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    assert _compat.producer_started(raw) is False
    assert _compat.client_closed(raw) is False
    await raw.start()
    try:
        assert _compat.producer_started(raw) is True
        assert _compat.client_closed(raw) is False
    finally:
        await raw.stop()
    assert _compat.client_closed(raw) is True


@pytest.mark.broker
async def test_consumer_started_is_read_from_the_client(kafka_bootstrap: str) -> None:
    raw = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id="g-compat", enable_auto_commit=False
    )
    assert _compat.consumer_started(raw) is False
    await raw.start()
    try:
        assert _compat.consumer_started(raw) is True
    finally:
        await raw.stop()
    assert _compat.client_closed(raw) is True


async def test_connection_settings_of_both_clients() -> None:
    ssl = None
    producer = AIOKafkaProducer(
        bootstrap_servers="127.0.0.1:1", client_id="me", sasl_plain_username="u"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=["127.0.0.1:1", "127.0.0.1:2"], security_protocol="PLAINTEXT"
    )
    try:
        got = _compat.connection_of(producer)
        assert set(got) == set(_compat.CONNECTION_SETTINGS)
        assert got["bootstrap_servers"] == "127.0.0.1:1"
        assert got["client_id"] == "me" and got["sasl_plain_username"] == "u"
        assert got["ssl_context"] is ssl
        got = _compat.connection_of(consumer)
        assert got["bootstrap_servers"] == ["127.0.0.1:1", "127.0.0.1:2"]
        assert got["security_protocol"] == "PLAINTEXT"
        # What it reads builds a client that reaches the same place.
        again = AIOKafkaConsumer(**got)
        await again.stop()
    finally:
        await producer.stop()
        await consumer.stop()
