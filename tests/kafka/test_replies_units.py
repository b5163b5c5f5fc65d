"""Request/reply pieces that need no broker: reply addresses, options, capabilities."""

from __future__ import annotations

import pytest
from dispytch.errors import ConfigError
from dispytch.kafka import KafkaConsumer, KafkaProducer
from dispytch.kafka.config import CAPABILITIES, KafkaOptions
from dispytch.kafka.plugin import dispytch_transports
from dispytch.kafka.replies import parse_reply_address
from dispytch.message import Message


def test_reply_addresses() -> None:
    assert parse_reply_address("dispytch.replies:7") == ("dispytch.replies", 7)
    assert parse_reply_address("a:b:12") == ("a:b", 12)
    for bad in ("", "topic", ":3", "topic:", "topic:-1", "topic:x"):
        assert parse_reply_address(bad) is None


def test_reply_options() -> None:
    opts = KafkaOptions.parse("reply_topic=rr.back&reply_partitions=4")
    assert (opts.reply_topic, opts.reply_partitions) == ("rr.back", 4)
    assert KafkaOptions().reply_topic == "dispytch.replies"
    with pytest.raises(ConfigError):
        KafkaOptions.parse(reply_partitions=0)
    producer = KafkaProducer.from_url("kafka://127.0.0.1:1?reply_topic=rr.back")
    assert producer.options.reply_topic == "rr.back"


def test_capabilities_declare_request_reply() -> None:
    assert CAPABILITIES.request_reply
    assert all(spec.capabilities.request_reply for spec in dispytch_transports())
    consumer = KafkaConsumer.from_url("kafka://127.0.0.1:1", group_id="g")
    assert consumer.capabilities.request_reply
    req = Message(b"", route="t", headers={"dispytch-reply-to": "dispytch.replies:3"})
    assert consumer.reply_address(req) == "dispytch.replies:3"
    assert consumer.reply_address(Message(b"", route="t", headers={})) is None


async def test_a_reply_to_a_malformed_address_is_dropped_not_raised() -> None:
    consumer = KafkaConsumer.from_url("kafka://127.0.0.1:1", group_id="g")
    req = Message(b"", route="t", headers={"dispytch-reply-to": "no-partition"})
    await consumer.send_reply(req, b"x", {"dispytch-correlation-id": "c"})  # no client built
    assert consumer._replies._producer is None


async def test_a_failed_open_leaves_nothing_running() -> None:
    from aiokafka.errors import KafkaError
    from dispytch.kafka.replies import ReplyReader

    reader = ReplyReader({"bootstrap_servers": "127.0.0.1:1"}, "dispytch.replies", 4)
    with pytest.raises(KafkaError):
        await reader.open(lambda message: None)
    assert reader.address is None
    assert (reader._admin, reader._consumer, reader._task) == (None, None, None)
