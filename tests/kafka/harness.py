"""The Kafka :class:`~dispytch.testing.TransportHarness` (shared by the Kafka tests).

Two modes, as users build clients: ``"url"`` (``KafkaProducer.from_url``: Dispytch owns
the client) and ``"client"`` (the seed documents' way: ``KafkaProducer(AIOKafkaProducer)``
over a producer the test started itself, ``KafkaConsumer(AIOKafkaConsumer)`` over a
consumer the test built). In client mode the harness keeps the raw clients
and stops them in :meth:`cleanup`; Dispytch must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from dispytch.kafka import KafkaConsumer, KafkaEventRoute, KafkaEventSubscription, KafkaProducer
from dispytch.kafka.config import CAPABILITIES
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing import TransportHarness
from dispytch.testing.harness import Mode, Outage, SeverableConsumer
from dispytch.transport import Consumer, OutgoingMessage, Producer

try:  # the conformance suite's lanes (newer dispytch.testing)
    from dispytch.testing.harness import Lane
except ImportError:  # pragma: no cover - older core: lanes() is unused there
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Lane:  # type: ignore[no-redef]
        name: str
        route: EventRoute
        key: str | None = None


from .helpers import HOST, create_topic, free_port, start_tansu

_PARTITIONER = DefaultPartitioner()

#: Group and fetch settings of the tests' consumers, for Tansu's timing (not semantics):
#: a joining member waits about half the session timeout (at least 1 s) before the group
#: settles, and a member joining right after another left waits about two sessions more
#: (measured: 7.1 s with a 3 s session, 4.1 s with 2 s); an empty fetch is held for the
#: whole ``fetch_max_wait_ms`` (aiokafka: 500 ms) even when records arrive meanwhile.
#: Four heartbeats per session leave room for a loaded machine.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 100}

#: The lease of the harness's consumers: aiokafka leaves the group after this long without
#: a ``getmany`` (``max_poll_interval_ms``). Short, so that the lease case (a handler
#: several leases long) is quick, and so that every case runs with a consumer that must
#: keep polling while the dispatcher holds back.
LEASE_SECONDS = 2.0
LEASE = {"max_poll_interval_ms": int(LEASE_SECONDS * 1000)}

#: Started producers kept ready for :meth:`KafkaHarness.producer`, which is synchronous.
_POOL = 2


class KafkaHarness(TransportHarness):
    """Kafka through Tansu: topics are created up front (as operators usually do)."""

    name = "kafka"
    capabilities = CAPABILITIES
    at_least_once = True
    supports_keys = True
    supports_patterns = True
    redelivery_timeout = 20.0
    lease_seconds = LEASE_SECONDS
    #: At least once: a restart or a rebalance may hand a record out again.
    may_duplicate = True

    def __init__(
        self, bootstrap: str, *, partitions: int = 1, mode: Mode = "url", ordered: bool = True
    ) -> None:
        self.bootstrap = bootstrap
        #: The consumers' ``ordered`` (request/reply runs one partition's requests at once).
        self.ordered = ordered
        self.url = f"kafka://{bootstrap}"
        self.partitions = partitions
        self.mode = mode
        self.name = f"kafka-{mode}"
        self._created: set[str] = set()
        self._raw: list[Any] = []  # every client the harness built (client mode)
        self._ready: list[AIOKafkaProducer] = []
        # Client mode, per group: the consumers handed out, with the KafkaConsumers
        # wrapping them; and the stops of those retired (awaited in prepare/cleanup).
        self._handed: dict[str, list[tuple[AIOKafkaConsumer, list[KafkaConsumer]]]] = {}
        self._stopping: list[asyncio.Future[None]] = []
        self._frozen: list[subprocess.Popen[bytes]] = []  # Tansus frozen by SIGSTOP
        self._publisher: AIOKafkaProducer | None = None  # publish_raw's plain client
        self._own: list[subprocess.Popen[bytes]] = []  # Tansus of severable_consumer
        self._prepared: dict[str, set[str]] = {}  # group -> the names prepared for it
        self._own_raw: list[Any] = []  # the user's clients of those Tansus (client mode)

    async def setup(self) -> None:
        """Start the producers :meth:`producer` hands out (client mode)."""
        await self._refill()

    async def _refill(self) -> None:
        while self.mode == "client" and len(self._ready) < _POOL:
            self._ready.append(await self._started_producer())

    async def _started_producer(self) -> AIOKafkaProducer:
        raw = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        self._raw.append(raw)
        await raw.start()
        return raw

    async def prepare(self, name: str, *, group: str) -> None:
        if name not in self._created:
            try:
                await create_topic(self.bootstrap, name, self.partitions)
            except TopicAlreadyExistsError:
                pass
            self._created.add(name)
        self._prepared.setdefault(group, set()).add(name)
        await self._refill()
        self._retire(group)
        await self._retired()

    def _retire(self, group: str) -> None:
        """Stop the group's consumers whose dispatchers are done with them, as their user
        would before starting another: a started consumer stays a member of its group
        and would keep partitions from the next one."""
        keep = []
        for raw, wrappers in self._handed.get(group, []):
            if all(w._closed for w in wrappers):
                self._stopping.append(asyncio.ensure_future(raw.stop()))
            else:
                keep.append((raw, wrappers))
        self._handed[group] = keep

    async def _retired(self) -> None:
        stopping, self._stopping = self._stopping, []
        for task in stopping:
            await task

    def _raw_consumer(self, group: str, topics: list[str]) -> AIOKafkaConsumer:
        raw = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **FAST_GROUP,
            **LEASE,
        )
        self._raw.append(raw)
        return raw

    def _wrap(self, group: str, raw: AIOKafkaConsumer) -> KafkaConsumer:
        wrapper = KafkaConsumer(raw, commit_interval=0.05, ordered=self.ordered)
        for handed, wrappers in self._handed.setdefault(group, []):
            if handed is raw:
                wrappers.append(wrapper)
                break
        else:
            self._handed[group].append((raw, [wrapper]))
        return wrapper

    def route(self, name: str) -> EventRoute:
        return KafkaEventRoute(topic=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        return KafkaEventSubscription(topic=name)

    def producer(self) -> Producer:
        if self.mode == "url":
            return KafkaProducer.from_url(self.url)
        if not self._ready:
            raise RuntimeError("KafkaHarness: no started producer left; call prepare() first")
        return KafkaProducer(self._ready.pop())

    async def ready_producer(self) -> Producer:
        if self.mode == "url":
            return await super().ready_producer()
        return KafkaProducer(await self._started_producer())

    async def closed_producer(self) -> Producer:
        if self.mode == "url":
            return KafkaProducer.from_url(self.url)
        raw = await self._started_producer()
        await raw.stop()
        return KafkaProducer(raw)

    async def unstarted_producer(self) -> Producer | None:
        if self.mode == "url":
            return KafkaProducer.from_url(self.url)
        raw = AIOKafkaProducer(bootstrap_servers=self.bootstrap)  # the user forgot start()
        self._raw.append(raw)
        return KafkaProducer(raw)

    async def unconfirmed_producer(self) -> Producer | None:
        """A started producer on a Tansu of its own, then frozen (``SIGSTOP``): its
        connections stay open and nothing is ever confirmed. :meth:`cleanup` kills it."""
        port = free_port()
        proc = start_tansu(port)
        self._frozen.append(proc)
        bootstrap = f"{HOST}:{port}"
        if self.mode == "url":
            producer = KafkaProducer.from_url(f"kafka://{bootstrap}", delivery_timeout=1.0)
            await producer.start()
        else:
            raw = AIOKafkaProducer(bootstrap_servers=bootstrap)
            self._raw.append(raw)
            await raw.start()
            producer = KafkaProducer(raw, delivery_timeout=1.0)
        await create_topic(bootstrap, "unconfirmed", 1)
        # the producer knows the topic's partitions before the broker freezes
        await producer.send(
            OutgoingMessage(KafkaEventRoute(topic="unconfirmed"), b"warm", {}, None)
        )
        os.kill(proc.pid, signal.SIGSTOP)
        return producer

    async def severable_consumer(
        self, *, group: str, outage: Outage = "killed"
    ) -> SeverableConsumer | None:
        """The group's consumer on a Tansu of its own (the topics prepared for the group
        created there too), which ``sever`` kills, or freezes with ``SIGSTOP`` (its
        connections stay open, nothing answers; ``release`` then kills it). A proxy in
        front of the shared broker would not do: Tansu advertises its own address, and
        clients connect to that. What the consumer took dies with that broker, so
        nothing-lost is not checked here (``shared=False``); the producer returned
        reaches that broker."""
        port = free_port()
        proc = await asyncio.to_thread(start_tansu, port)
        self._own.append(proc)
        bootstrap = f"{HOST}:{port}"
        for name in sorted(self._prepared.get(group, ())):
            await create_topic(bootstrap, name, self.partitions)
        consumer: KafkaConsumer
        producer: KafkaProducer
        if self.mode == "url":
            consumer = KafkaConsumer.from_url(
                f"kafka://{bootstrap}",
                group_id=group,
                commit_interval=0.05,
                ordered=self.ordered,
                **FAST_GROUP,
                **LEASE,
            )
            producer = KafkaProducer.from_url(f"kafka://{bootstrap}")
        else:
            raw = AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **FAST_GROUP,
                **LEASE,
            )
            self._own_raw.append(raw)
            consumer = KafkaConsumer(raw, commit_interval=0.05, ordered=self.ordered)
            raw_producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            self._own_raw.append(raw_producer)
            await raw_producer.start()
            producer = KafkaProducer(raw_producer)

        async def kill() -> None:
            proc.kill()  # SIGKILL ends a stopped process too
            await asyncio.to_thread(proc.wait, 10)

        if outage == "killed":
            return SeverableConsumer(consumer, kill, producer=producer, shared=False)

        async def freeze() -> None:
            os.kill(proc.pid, signal.SIGSTOP)

        return SeverableConsumer(consumer, freeze, producer=producer, shared=False, release=kill)

    async def lanes(self, name: str, count: int) -> list[Lane]:
        """One topic of ``count`` partitions, and for each a key that Kafka's default
        partitioner puts on it: lanes are partitions, as in production."""
        if name not in self._created:
            await create_topic(self.bootstrap, name, count)
            self._created.add(name)
        keys: dict[int, str] = {}
        n = 0
        while len(keys) < count and n < 10_000:
            key = f"k{n}"
            keys.setdefault(_PARTITIONER(key.encode(), list(range(count)), []), key)
            n += 1
        return [Lane(name, self.route(name), keys[p]) for p in range(count)]

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "url":
            return KafkaConsumer.from_url(
                self.url,
                group_id=group,
                commit_interval=0.05,
                ordered=self.ordered,
                **FAST_GROUP,
                **LEASE,
            )
        # The user's own consumer. It is not started here (this method is synchronous):
        # KafkaConsumer subscribes it to the handlers' topics and starts it, and it stays
        # the user's (cleanup stops it). Consumers the user subscribed and started
        # themselves: tests/kafka/test_lifecycle.py, test_consumer.py, test_seeds.py.
        self._retire(group)
        return self._wrap(group, self._raw_consumer(group, []))

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        if self.mode == "url":
            return self.consumer(group=group)
        assert isinstance(consumer, KafkaConsumer) and consumer.raw is not None
        return self._wrap(group, consumer.raw)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Publish with a plain ``AIOKafkaProducer`` of the harness's own (started on
        first use, stopped in :meth:`cleanup`), one record at a time, awaited."""
        raw = self._publisher
        if raw is None:
            raw = self._publisher = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            self._raw.append(raw)
            await raw.start()
        await raw.send_and_wait(name, payload, headers=list(headers.items()) if headers else None)

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        # Kafka cannot reject one record: a rejected one is committed past after the
        # ERROR log (dead-letter it with the DeadLetter middleware to keep it).
        return None

    async def cleanup(self) -> None:
        await self._retired()
        for proc in self._frozen:
            proc.kill()  # SIGKILL ends a stopped process too
            proc.wait(10)
        self._frozen.clear()
        for proc in self._own:
            proc.kill()
            proc.wait(10)
        self._own.clear()
        for raw in self._own_raw:
            # Their broker is gone: aiokafka's consumer stop() then lets the
            # CancelledError of its own fetch task out (not a cancellation of ours).
            try:
                await asyncio.wait_for(raw.stop(), 10)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:
                pass
        self._own_raw.clear()
        for raw in self._raw:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(raw.stop(), 10)
        self._raw.clear()
        self._publisher = None
        self._ready.clear()
        self._handed.clear()
