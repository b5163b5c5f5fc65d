"""The sample plugin's own behaviour: its transport's semantics on disk, its serializer and
middleware, and its laziness. Runs from source with the plugin registered in-process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from dispytch import (
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    NotStartedError,
    TopicRoute,
    TopicSubscription,
)
from dispytch.errors import EmitError
from dispytch.transport import HEADER_CONTENT_TYPE, Message, OutgoingMessage

from .conftest import SAMPLE_SRC, run_python

if str(SAMPLE_SRC) not in sys.path:
    sys.path.insert(0, str(SAMPLE_SRC))

from dispytch_sample import SampleEventRoute, SampleEventSubscription  # noqa: E402
from dispytch_sample.transport import SpoolConsumer, SpoolProducer  # noqa: E402

TIMEOUT = 5.0


class Signup(EventBase):
    __route__ = SampleEventRoute(topic="user.{user_id}.signup")
    user_id: int
    email: str


def out(topic: str, payload: bytes = b"{}", **headers: str) -> OutgoingMessage:
    return OutgoingMessage(TopicRoute(topic=topic), payload, dict(headers), key=b"k")


async def next_message(consumer: SpoolConsumer) -> Message:
    async def first() -> Message:
        async for message in consumer.listen():
            return message
        raise AssertionError("listen() ended")

    return await asyncio.wait_for(first(), TIMEOUT)


async def started(*clients):
    for c in clients:
        await c.start()
    return clients


# -- through the plugin host ------------------------------------------------------------------


async def test_end_to_end_through_from_url_with_serializer_and_middleware(sample_plugin, tmp_path):
    url = f"sample://{tmp_path / 'spool'}?poll=0.01"
    audit = tmp_path / "audit.log"
    got: list[tuple[int, str, str]] = []
    done = asyncio.Event()
    dispatcher = EventDispatcher.from_url(url, group="mail")

    @dispatcher.handler(
        SampleEventSubscription(topic="user.{user_id}.signup"),
        middlewares=[("sample-audit", {"path": audit})],
    )
    async def welcome(event: Event[Signup], user_id: int):
        got.append((user_id, event.body.email, event.headers[HEADER_CONTENT_TYPE]))
        if len(got) == 2:
            done.set()

    async with EventEmitter.from_url(url, serializer="json-gzip") as emitter, dispatcher:
        await emitter.emit(Signup(user_id=1, email="a@x"))
        await emitter.emit(Signup(user_id=2, email="b@x"))
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert sorted(got) == [(1, "a@x", "application/json+gzip"), (2, "b@x", "application/json+gzip")]
    lines = sorted(audit.read_text().splitlines())
    assert [line.split("\t")[:2] for line in lines] == [
        ["ok", "user.1.signup"],
        ["ok", "user.2.signup"],
    ]
    # Everything was acknowledged: nothing is left on disk to deliver.
    leftovers = [p for p in (tmp_path / "spool").rglob("*.msg")]
    assert leftovers == []


def test_bad_url_says_how_to_write_one(sample_plugin):
    with pytest.raises(
        ValueError,
        match=r"'sample://' names no spool directory\. Write "
        r"sample:///absolute/path",
    ):
        EventEmitter.from_url("sample://")


# -- the transport's semantics ------------------------------------------------------------------


async def test_send_before_start_raises(tmp_path):
    with pytest.raises(
        NotStartedError,
        match=r"The sample producer is not started\. Call "
        r"`await emitter.start\(\)`",
    ):
        await SpoolProducer(tmp_path).send(out("t"))


async def test_topic_must_be_a_plain_directory_name(tmp_path):
    (producer,) = await started(SpoolProducer(tmp_path))
    with pytest.raises(
        EmitError,
        match=r"Topic '\.\./escape' cannot be a directory name "
        r"here: no slashes",
    ):
        await producer.send(out("../escape"))


async def test_listen_before_start_raises(tmp_path):
    with pytest.raises(NotStartedError, match="The sample consumer is not started"):
        await next_message(SpoolConsumer(tmp_path))


async def test_headers_key_and_attempt_travel_and_nack_requeues(tmp_path):
    producer, consumer = SpoolProducer(tmp_path), SpoolConsumer(tmp_path, poll_interval=0.01)
    consumer.subscribe([TopicSubscription(topic="orders")])
    await started(producer, consumer)
    await producer.send(out("orders", b"payload", a="1"))
    first = await next_message(consumer)
    assert (first.payload, dict(first.headers), first.key, first.attempt, first.route) == (
        b"payload",
        {"a": "1"},
        b"k",
        1,
        "orders",
    )
    await consumer.nack(first, requeue=True)
    again = await next_message(consumer)
    assert (again.payload, again.attempt) == (b"payload", 2)
    await consumer.ack(again)
    await consumer.close()
    assert list(tmp_path.rglob("*.msg")) == []


async def test_nack_without_requeue_moves_the_file_to_rejected(tmp_path):
    producer, consumer = SpoolProducer(tmp_path), SpoolConsumer(tmp_path, group="g")
    consumer.subscribe([TopicSubscription(topic="orders")])
    await started(producer, consumer)
    await producer.send(out("orders", b"bad"))
    message = await next_message(consumer)
    await consumer.nack(message, requeue=False)
    await consumer.close()
    (rejected,) = (tmp_path / "orders" / "g" / "rejected").iterdir()
    assert rejected.read_bytes().endswith(b"\nbad")


async def test_close_gives_unsettled_messages_back(tmp_path):
    producer = SpoolProducer(tmp_path)
    first = SpoolConsumer(tmp_path, group="g")
    first.subscribe([TopicSubscription(topic="t")])
    await started(producer, first)
    await producer.send(out("t", b"one"))
    held = await next_message(first)
    assert held.attempt == 1
    await first.close()  # never settled
    second = SpoolConsumer(tmp_path, group="g")
    second.subscribe([TopicSubscription(topic="t")])
    await second.start()
    redelivered = await next_message(second)
    assert (redelivered.payload, redelivered.attempt) == (b"one", 2)
    await second.ack(redelivered)
    await second.close()


async def test_claims_of_a_dead_consumer_process_are_redelivered(tmp_path):
    # A consumer in another process claims the message and dies without settling it.
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {str(SAMPLE_SRC)!r})
from dispytch import TopicSubscription
from dispytch_sample.transport import SpoolConsumer

async def main():
    c = SpoolConsumer({str(tmp_path)!r}, group="g")
    c.subscribe([TopicSubscription(topic="t")])
    await c.start()
    async for m in c.listen():
        print("claimed", m.payload.decode(), flush=True)
        os._exit(0)  # crash: no ack, no close

asyncio.run(asyncio.wait_for(main(), 20))
"""
    (producer,) = await started(SpoolProducer(tmp_path))
    # The group must exist before publishing (else the message is parked for it).
    (tmp_path / "t" / "g" / "new").mkdir(parents=True, exist_ok=True)
    await producer.send(out("t", b"orphan"))
    crashed = run_python(script)
    assert crashed.stdout.strip() == "claimed orphan", crashed.stderr
    (claimed,) = (tmp_path / "t" / "g" / "cur").iterdir()
    assert claimed.name.split("~")[1].startswith(f"{_dead_pid(claimed)}.")

    survivor = SpoolConsumer(tmp_path, group="g")
    survivor.subscribe([TopicSubscription(topic="t")])
    await survivor.start()
    message = await next_message(survivor)
    assert (message.payload, message.attempt) == (b"orphan", 2)
    await survivor.ack(message)
    await survivor.close()


def _dead_pid(claimed: Path) -> int:
    pid = int(claimed.name.split("~")[1].split(".")[0])
    assert pid != os.getpid()
    return pid


async def test_every_group_gets_each_message_and_members_share_them(tmp_path):
    producer = SpoolProducer(tmp_path)
    a1, a2, b = (SpoolConsumer(tmp_path, group=g, poll_interval=0.01) for g in "aab")
    for c in (a1, a2, b):
        c.subscribe([TopicSubscription(topic="t")])
    await started(producer, a1, a2, b)
    for i in range(4):
        await producer.send(out("t", str(i).encode()))

    async def drain(consumer: SpoolConsumer, into: list[bytes], stop: asyncio.Event) -> None:
        async for message in consumer.listen():
            into.append(message.payload)
            await consumer.ack(message)
            if stop.is_set():
                break

    got_a1: list[bytes] = []
    got_a2: list[bytes] = []
    got_b: list[bytes] = []
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(drain(c, into, stop))
        for c, into in ((a1, got_a1), (a2, got_a2), (b, got_b))
    ]

    async def until_done() -> None:
        while len(got_a1) + len(got_a2) < 4 or len(got_b) < 4:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(until_done(), TIMEOUT)
    for c in (a1, a2, b):
        await c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert sorted(got_a1 + got_a2) == [b"0", b"1", b"2", b"3"]  # each once within group a
    assert got_b == [b"0", b"1", b"2", b"3"]  # in publish order for group b


async def test_messages_published_before_any_group_are_kept_for_the_first(tmp_path):
    (producer,) = await started(SpoolProducer(tmp_path))
    await producer.send(out("early", b"kept"))
    consumer = SpoolConsumer(tmp_path, group="late")
    consumer.subscribe([TopicSubscription(topic="early")])
    await consumer.start()
    message = await next_message(consumer)
    assert message.payload == b"kept"
    await consumer.ack(message)
    await consumer.close()


async def test_pattern_subscriptions_match_topic_directories(tmp_path):
    (producer,) = await started(SpoolProducer(tmp_path))
    consumer = SpoolConsumer(tmp_path, poll_interval=0.01)
    consumer.subscribe([SampleEventSubscription(topic="user.*.signup")])
    await consumer.start()
    await producer.send(out("user.7.signup", b"yes"))
    await producer.send(out("user.7.deleted", b"no"))
    message = await next_message(consumer)
    assert (message.route, message.payload) == ("user.7.signup", b"yes")
    await consumer.ack(message)
    await consumer.close()
    assert not (tmp_path / "user.7.deleted" / "default").exists()


async def test_stop_ends_a_waiting_listen_promptly(tmp_path):
    consumer = SpoolConsumer(tmp_path, poll_interval=60)  # would sleep a minute
    consumer.subscribe([TopicSubscription(topic="quiet")])
    await consumer.start()

    async def listen() -> list[Message]:
        return [m async for m in consumer.listen()]

    task = asyncio.create_task(listen())
    await asyncio.sleep(0)
    await consumer.stop()
    assert await asyncio.wait_for(task, TIMEOUT) == []


async def test_an_unreadable_file_is_rejected_and_the_loop_goes_on(tmp_path):
    producer, consumer = SpoolProducer(tmp_path), SpoolConsumer(tmp_path, group="g")
    consumer.subscribe([TopicSubscription(topic="t")])
    await started(producer, consumer)
    (tmp_path / "t" / "g" / "new").mkdir(parents=True, exist_ok=True)
    (tmp_path / "t" / "g" / "new" / "0000-garbage.msg").write_bytes(b"no header line")
    await producer.send(out("t", b"good"))
    message = await next_message(consumer)
    assert message.payload == b"good"
    await consumer.ack(message)
    await consumer.close()
    assert [p.name for p in (tmp_path / "t" / "g" / "rejected").iterdir()] == ["0000-garbage.msg"]


# -- laziness ----------------------------------------------------------------------------------


def test_loading_the_plugin_imports_neither_transport_nor_middleware():
    result = run_python(
        f"""
import json, sys
sys.path.insert(0, {str(SAMPLE_SRC)!r})
import dispytch_sample.plugin as plugin
from dispytch.plugins import get_plugin_manager, plugin_infos
get_plugin_manager().register(plugin, name="sample")
infos = {{i.name: i for i in plugin_infos()}}
print(json.dumps({{
    "schemes": [t.schemes for t in infos["sample"].transports],
    "loaded": sorted(m for m in sys.modules if m.startswith("dispytch_sample.")),
}}))
""",
        env={"DISPYTCH_PLUGINS": "none"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schemes"] == [["sample"]]
    assert report["loaded"] == ["dispytch_sample.plugin", "dispytch_sample.routes"]


def test_the_sample_is_not_part_of_the_workspace_distributions():
    root = Path(__file__).parents[2]
    for pyproject in [root / "pyproject.toml", *root.glob("dispytch-*/pyproject.toml")]:
        text = pyproject.read_text().replace("tests/plugins/sample_plugin/build", "")
        assert "dispytch-sample" not in text and "sample_plugin" not in text, pyproject
    own = (SAMPLE_SRC.parent / "pyproject.toml").read_text()
    assert 'name = "dispytch-sample-transport"' in own
    assert '"dispytch-core>=0.1,<0.2"' in own  # a range of core, as third parties do
    assert '[project.entry-points.dispytch]\nsample = "dispytch_sample.plugin"' in own


async def test_groups_subscribed_by_pattern_all_get_a_message_on_a_new_topic(tmp_path):
    producer = SpoolProducer(tmp_path)
    first = SpoolConsumer(tmp_path, group="one", poll_interval=0.01)
    second = SpoolConsumer(tmp_path, group="two", poll_interval=0.01)
    first.subscribe([SampleEventSubscription(topic="audit.#")])
    second.subscribe([SampleEventSubscription(topic="audit.{kind}")])
    await started(producer, first, second)
    await producer.send(out("audit.login", b"new topic"))  # no directory existed for it
    for consumer in (first, second):
        message = await next_message(consumer)
        assert (message.route, message.payload) == ("audit.login", b"new topic")
        await consumer.ack(message)
        await consumer.close()
    assert not (tmp_path / "audit.login" / "_parked").exists()
