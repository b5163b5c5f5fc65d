"""Request/reply over Kafka: the requester's reply partition, and the responder's replies.

The layout (documented in the README's "Request/reply" section):

* Replies come back on one shared topic, ``reply_topic`` (default ``dispytch.replies``),
  created with ``reply_partitions`` partitions (default 16) by the first requester that
  finds it missing. No topic is created per process, so there is no topic churn.
* Each requesting producer reads **one** partition of it, picked at random when it opens
  its replies, with a small ``AIOKafkaConsumer`` of its own that has **no consumer
  group**: the partition is assigned, not subscribed (no join, no rebalance), and the
  reader starts at the partition's end, fixed before the first request goes out. Its
  ``fetch_max_wait_ms`` is 10 ms, so a reply is fetched as soon as it is stored (a broker
  such as Tansu holds an empty fetch for the whole wait). It fetches only while a reply
  may come (until 10 s after the latest request, or 2 s past its deadline if later), and
  pauses its partition otherwise: an idle process sends no fetches.
* A request carries ``dispytch-reply-to: "<topic>:<partition>"``; the responder produces
  the reply to that partition with ``dispytch-correlation-id``. Producers that picked the
  same partition read each other's replies and drop them (they match no pending request).
* "Nothing routable": a request to a topic that does not exist raises ``NoRouteError``
  at once (checked with the admin client's topic listing, existing topics remembered for
  a few seconds). A topic that exists but that no consumer group reads is **not**
  detected: such a request waits for its timeout. Kafka has no sound, cheap way to ask
  "does a responder read this topic": the admin API's ``list_consumer_groups`` plus
  ``describe_consumer_groups`` (decoding each member's assignment) costs a request per
  group coordinator and grows with every group of the cluster; it misses responders on a
  manual ``assign()`` (not members of any group) and groups mid-rebalance (members with
  no assignment yet), so it would fail requests a responder would answer; a group that
  reads the topic for another reason counts as a responder. On Tansu (the tests' broker)
  ``ListGroups`` returns no group at all and ``DescribeGroups`` gives members without
  metadata or assignment, still "Stable" after the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]
from dispytch.backoff import Backoff
from dispytch.cqrs.wire import HEADER_REPLY_TO, ReplyHandler
from dispytch.message import Message

__all__ = ["REPLY_FETCH_WAIT_MS", "ReplyReader", "ReplyWriter", "parse_reply_address"]

log = logging.getLogger("dispytch.kafka")

#: ``fetch_max_wait_ms`` of the reply reader: how long the broker may hold an empty fetch.
REPLY_FETCH_WAIT_MS = 10
#: Seconds past the latest deadline sent that the reader keeps fetching replies.
REPLY_GRACE = 2.0
#: Seconds after any request that the reader keeps fetching (a forwarded deadline may
#: already have passed: its "expired" reply still comes back).
REPLY_MIN_AWAKE = 10.0
#: Seconds a topic found to exist is not looked up again before a request to it.
KNOWN_TOPIC_TTL = 5.0
#: Seconds to wait for the admin client (create, list) before giving up.
ADMIN_TIMEOUT = 20.0


def parse_reply_address(address: str) -> tuple[str, int] | None:
    """``"topic:partition"`` -> ``(topic, partition)``, or ``None`` when malformed."""
    topic, sep, partition = address.rpartition(":")
    if not sep or not topic or not partition.isdigit():
        return None
    return topic, int(partition)


def _connection(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Only the settings every aiokafka client takes (servers, security, client id)."""
    from dispytch.kafka._compat import CONNECTION_SETTINGS

    return {k: v for k, v in kwargs.items() if k in CONNECTION_SETTINGS and v is not None}


class ReplyReader:
    """The requester side: one reply partition per producer, read without a group.

    Args:
        connection: Settings for the extra clients (``bootstrap_servers``, security).
        topic: The reply topic.
        partitions: Its partition count when this reader creates it.
    """

    def __init__(self, connection: Mapping[str, Any], topic: str, partitions: int) -> None:
        self.connection = _connection(connection)
        self.topic = topic
        self.partitions = partitions
        self.address: str | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._known: dict[str, float] = {}
        self._listing: asyncio.Future[set[str]] | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        # The reader fetches only while a request may still be answered: until the
        # latest deadline sent plus a grace; then it pauses its partition (no fetches
        # from an idle process) until the next request.
        self._awake_until = 0.0
        self._wake = asyncio.Event()

    async def open(self, deliver: ReplyHandler) -> str:
        """Start reading this producer's reply partition; returns its address (idempotent)."""
        async with self._opening:
            if self.address is not None and self._task is not None and not self._task.done():
                return self.address
            await self.close()
            try:
                tp = await self._start(deliver)
            except BaseException:
                await self.close()  # whatever was started: nothing half-open is left
                raise
            self.address = f"{tp.topic}:{tp.partition}"
            return self.address

    async def _start(self, deliver: ReplyHandler) -> TopicPartition:
        admin = self._admin = AIOKafkaAdminClient(**self.connection)
        await asyncio.wait_for(admin.start(), ADMIN_TIMEOUT)
        partitions = await self._ensure_topic(admin)
        tp = TopicPartition(self.topic, random.choice(partitions))
        consumer = self._consumer = AIOKafkaConsumer(
            **self.connection,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=REPLY_FETCH_WAIT_MS,
        )
        await consumer.start()
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)  # the end is fixed before the first request
        self._task = asyncio.create_task(self._read(consumer, tp, deliver), name="kafka-replies")
        return tp

    async def _ensure_topic(self, admin: AIOKafkaAdminClient) -> list[int]:
        for _ in range(50):  # bounded: a topic just created may take a moment to show
            described = await asyncio.wait_for(admin.describe_topics([self.topic]), ADMIN_TIMEOUT)
            found = [
                p["partition"]
                for t in described
                if t.get("topic") == self.topic and not t.get("error_code")
                for p in t.get("partitions", [])
            ]
            if found:
                return sorted(found)
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(
                    admin.create_topics([NewTopic(self.topic, self.partitions, 1)]),
                    ADMIN_TIMEOUT,
                )
            await asyncio.sleep(0.1)
        raise KafkaError(f"reply topic {self.topic!r} has no partitions after creating it")

    def expect(self, deadline: float) -> None:
        """A request with this deadline (epoch seconds) is going out: read until then."""
        self._awake_until = max(
            self._awake_until, deadline + REPLY_GRACE, time.time() + REPLY_MIN_AWAKE
        )
        self._wake.set()

    async def _read(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, deliver: ReplyHandler
    ) -> None:
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            if time.time() > self._awake_until:
                consumer.pause(tp)  # the position stays: nothing sent meanwhile is missed
                self._wake.clear()
                await self._wake.wait()
                consumer.resume(tp)
            try:
                batches = await consumer.getmany(tp, timeout_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("Reading Kafka replies failed; retrying.", exc_info=True)
                await backoff.sleep()
                continue
            backoff.reset()
            for records in batches.values():
                for rec in records:
                    headers = {k: v.decode("utf-8", "replace") for k, v in rec.headers or ()}
                    try:
                        deliver(
                            Message(
                                rec.value if rec.value is not None else b"",
                                route=rec.topic,
                                headers=headers,
                                key=rec.key,
                            )
                        )
                    except Exception:
                        log.exception("Handing a Kafka reply to the requester failed.")

    async def routable(self, topic: str) -> bool:
        """Whether ``topic`` exists (a request to it can be received by some group)."""
        now = time.monotonic()
        seen = self._known.get(topic)
        if seen is not None and now - seen < KNOWN_TOPIC_TTL:
            return True
        admin = self._admin
        if admin is None:
            return True  # not opened: send_request says so
        listing = self._listing
        if listing is None or listing.done():
            # Requests sent at the same moment share one listing.
            listing = self._listing = asyncio.ensure_future(self._list_topics(admin))
        names = await asyncio.shield(listing)
        if topic in names:
            self._known[topic] = now
            return True
        return False

    @staticmethod
    async def _list_topics(admin: AIOKafkaAdminClient) -> set[str]:
        return set(await asyncio.wait_for(admin.list_topics(), ADMIN_TIMEOUT))

    async def close(self) -> None:
        """Stop the reader and its clients (replies still outstanding are lost)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), 5)
        self.address = None


class ReplyWriter:
    """The responder side: a small producer the consumer owns, built on the first reply."""

    def __init__(self, connection: Callable[[], Mapping[str, Any]]) -> None:
        self._connection = connection
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(**_connection(self._connection()))
                await producer.start()
                self._producer = producer
            return self._producer

    async def send(self, request: Message, payload: bytes, headers: Mapping[str, str]) -> None:
        """Produce a reply to the request's ``dispytch-reply-to`` partition (best effort)."""
        address = request.headers.get(HEADER_REPLY_TO)
        target = parse_reply_address(address) if address else None
        if target is None:
            log.warning(
                "Reply dropped: the request's reply address %r is not topic:partition.", address
            )
            return
        try:
            producer = await self._ready()
            await producer.send_and_wait(
                target[0],
                payload,
                partition=target[1],
                headers=[(k, v.encode()) for k, v in headers.items()],
            )
        except Exception as exc:  # the requester may be gone; a reply is best effort
            log.warning("Reply to %s could not be sent: %r", address, exc)

    async def close(self) -> None:
        """Stop the reply producer, if one was built."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)
