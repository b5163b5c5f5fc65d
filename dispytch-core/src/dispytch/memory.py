"""The embedded in-memory transport: ``memory://`` (``memory://name`` for another broker).

A :class:`MemoryBroker` lives in the process. Consumers join a *group*: every group whose
subscriptions match a topic gets a copy of each message published to it, and consumers
of one group compete for the group's messages. A message that was delivered but not
acknowledged goes back to its group when it is nacked with ``requeue=True`` or when its
consumer closes (as a broker does when a connection drops), with its attempt count
raised; ``nack(requeue=False)`` rejects it into :attr:`MemoryBroker.rejected`.
Messages published where no group listens are kept until a group subscribes.

Everything the broker keeps on its own is bounded, so that a long run with dynamic
topics cannot grow it: at most ``max_parked`` messages wait for a group in all (the
oldest is dropped first, whatever its topic, counted in
:attr:`MemoryBroker.parked_dropped`), the last
``max_rejected`` rejected messages are kept (older ones counted in
:attr:`MemoryBroker.rejected_dropped`), and the topic -> groups cache is emptied when it
holds ``ROUTE_CACHE_LIMIT`` topics. A group's own queue is not bounded: the dispatcher's
``max_in_flight`` bounds what it takes, and what waits there is what was published.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dispytch.cqrs.errors import NoRouteError
from dispytch.cqrs.wire import HEADER_REPLY_TO, ReplyHandler
from dispytch.errors import NotStartedError
from dispytch.patterns import RoutePattern
from dispytch.routes import EventRoute, EventSubscription, TopicRoute
from dispytch.transport import Capabilities, Message, OutgoingMessage

log = logging.getLogger("dispytch.memory")

#: Topics whose matching groups the broker remembers before it starts over.
ROUTE_CACHE_LIMIT = 4096


class _Inbox:
    """A group's messages waiting for a consumer: a deque, and the members waiting on it.

    What ``asyncio.Queue`` does here without its per-call bookkeeping: a publish is an
    append (and a wake-up only when a member waits), a read a ``popleft``.
    """

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: deque[Message] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()

    def qsize(self) -> int:
        return len(self.items)

    def put_nowait(self, msg: Message) -> None:
        self.items.append(msg)
        if self.waiters:
            self.wake()

    def wake(self) -> None:
        """Wake one waiting member (skipping any that stopped waiting)."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _Group:
    __slots__ = ("broker", "metadata", "name", "patterns", "queue", "unacked")

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.patterns: set[RoutePattern] = set()
        self.queue = _Inbox()
        self.unacked: dict[int, tuple[Message, MemoryConsumer]] = {}
        self.metadata: Mapping[str, Any] = MappingProxyType({"group": name})

    def matches(self, topic: str) -> bool:
        return any(p.match(topic) is not None for p in self.patterns)


class MemoryBroker:
    """An in-process broker: topics, consumer groups, acknowledgements, redelivery.

    Args:
        name: For :meth:`named` and ``memory://name`` URLs.
        max_parked: Messages kept in all for topics no group subscribes to yet.
        max_rejected: Rejected messages kept in :attr:`rejected`.

    Attributes:
        rejected: The last ``max_rejected`` messages that were nacked without requeue, in
            order (for tests and for inspecting what the failure policy gave up on).
        published: How many messages were published in all.
        parked_dropped: Messages dropped because ``max_parked`` were already waiting.
        rejected_dropped: Rejected messages no longer kept in :attr:`rejected`.
    """

    _registry: dict[str, MemoryBroker] = {}

    def __init__(
        self, name: str = "default", *, max_parked: int = 10_000, max_rejected: int = 10_000
    ) -> None:
        if max_parked < 0 or max_rejected < 0:
            raise ValueError("max_parked and max_rejected must not be negative.")
        self.name = name
        self.max_parked = max_parked
        self.max_rejected = max_rejected
        self._groups: dict[str, _Group] = {}
        self._route_cache: dict[str, tuple[_Group, ...]] = {}
        self._parked: deque[Message] = deque()  # oldest first, all topics
        self._ids = itertools.count(1)
        #: Request/reply: reply address -> the requesting producer's callback.
        self.reply_addresses: dict[str, ReplyHandler] = {}
        self.rejected: list[Message] = []
        self.published = 0
        self.parked_dropped = 0
        self.rejected_dropped = 0

    @classmethod
    def named(cls, name: str = "default") -> MemoryBroker:
        """The process-wide broker of that name (created on first use)."""
        broker = cls._registry.get(name)
        if broker is None:
            broker = cls._registry[name] = cls(name)
        return broker

    def group(self, name: str) -> _Group:
        grp = self._groups.get(name)
        if grp is None:
            grp = self._groups[name] = _Group(self, name)
        return grp

    def bind(self, group: _Group, pattern: RoutePattern) -> None:
        if pattern in group.patterns:
            return
        group.patterns.add(pattern)
        self._route_cache.clear()
        if not self._parked:
            return
        keep: deque[Message] = deque()
        taken: dict[str, bool] = {}
        for msg in self._parked:
            take = taken.get(msg.route)
            if take is None:
                take = taken[msg.route] = pattern.match(msg.route) is not None
            if take:
                group.queue.put_nowait(msg)
            else:
                keep.append(msg)
        self._parked = keep

    def _park(self, msg: Message) -> None:
        parked = self._parked
        if len(parked) >= self.max_parked:
            if not self.parked_dropped:
                log.warning(
                    "Memory broker %r: %d messages wait for topics no group subscribes to; "
                    "dropping the oldest (counted in parked_dropped). Subscribe first, or "
                    "raise max_parked.",
                    self.name,
                    self.max_parked,
                )
            self.parked_dropped += 1
            if not parked:
                return  # max_parked=0: nothing is kept
            parked.popleft()
        parked.append(msg)

    def reject(self, msg: Message) -> None:
        """Keep a rejected message in :attr:`rejected` (the last ``max_rejected`` of them)."""
        rejected = self.rejected
        if self.max_rejected == 0:
            self.rejected_dropped += 1
            return
        if len(rejected) >= self.max_rejected:
            del rejected[0]
            self.rejected_dropped += 1
        rejected.append(msg)

    @property
    def parked(self) -> int:
        """Messages waiting for a group to subscribe to their topic."""
        return len(self._parked)

    def publish(
        self, topic: str, payload: bytes, headers: dict[str, str], key: bytes | None
    ) -> None:
        """Deliver one message to every group subscribed to ``topic``."""
        self.published += 1
        groups = self._route_cache.get(topic)
        if groups is None:
            groups = tuple(g for g in self._groups.values() if g.matches(topic))
            if len(self._route_cache) >= ROUTE_CACHE_LIMIT:
                self._route_cache.clear()
            self._route_cache[topic] = groups
        if not groups:
            self._park(Message(payload, route=topic, headers=headers, key=key))
            return
        for grp in groups:
            grp.queue.put_nowait(
                Message(
                    payload,
                    route=topic,
                    headers=dict(headers),
                    key=key,
                    metadata=grp.metadata,
                )
            )

    def routable(self, topic: str) -> bool:
        """Whether any group subscribes to ``topic`` (a request to it can be received)."""
        return any(g.matches(topic) for g in self._groups.values())

    def pending(self, group: str) -> int:
        """Messages waiting in a group's queue plus those delivered but not settled."""
        grp = self.group(group)
        return grp.queue.qsize() + len(grp.unacked)


def _topic_of(route: EventRoute) -> str:
    topic = getattr(route, "topic", None)
    if not isinstance(topic, str):
        raise TypeError(
            f"The memory transport publishes to topics; {route!r} has none. "
            "Use MemoryEventRoute(topic=...) or TopicRoute(topic=...)."
        )
    return topic


class MemoryEventRoute(TopicRoute):
    """A route on the memory transport (a topic name, placeholders allowed)."""


class MemoryProducer:
    """Publishes to a :class:`MemoryBroker`.

    Args:
        broker: The broker (default: the process-wide ``"default"`` one).
    """

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker or MemoryBroker.named()
        self._running = False
        self._reply_address: str | None = None

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        if self._reply_address is not None:
            self.broker.reply_addresses.pop(self._reply_address, None)
            self._reply_address = None

    async def open_replies(self, deliver: ReplyHandler) -> None:
        """Request/reply: register this producer's one reply address with the broker."""
        if self._reply_address is None:
            self._reply_address = f"memory-reply-{next(self.broker._ids)}-{id(self):x}"
        self.broker.reply_addresses[self._reply_address] = deliver

    async def send_request(self, message: OutgoingMessage) -> None:
        """Publish a request with this producer's reply address.

        Raises:
            NoRouteError: No group subscribes to its topic (a request is never parked).
        """
        if not self._running:
            raise NotStartedError(
                "The memory producer is not started. Call `await emitter.start()` or use "
                "`async with emitter:` before sending requests."
            )
        if self._reply_address is None:
            raise NotStartedError("open_replies() was not called before send_request().")
        topic = _topic_of(message.route)
        if not self.broker.routable(topic):
            raise NoRouteError(
                f"No consumer group of memory broker {self.broker.name!r} subscribes to "
                f"{topic!r}, so the request cannot be received.\nStart a dispatcher with a "
                "handler for it first."
            )
        headers = dict(message.headers)
        headers[HEADER_REPLY_TO] = self._reply_address
        self.broker.publish(topic, message.payload, headers, message.key)

    async def send(self, message: OutgoingMessage) -> None:
        if not self._running:
            raise NotStartedError(
                "The memory producer is not started. Call `await emitter.start()` or use "
                "`async with emitter:` before emitting."
            )
        self.broker.publish(_topic_of(message.route), message.payload, message.headers, message.key)

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            await self.send(m)


class MemoryConsumer:
    """Consumes from a :class:`MemoryBroker` as a member of a consumer group.

    It can answer requests (``request_reply``): the reply goes straight to the requesting
    producer's reply address.

    Args:
        broker: The broker (default: the process-wide ``"default"`` one).
        group: The consumer group; groups each get every message, members of one group
            share them.
        ordered: Handle messages of one topic one at a time, in order (each topic is a
            lane; a lane can be paused, see :class:`~dispytch.transport.LanePausing`).
    """

    capabilities = Capabilities(request_reply=True)

    def __init__(
        self, broker: MemoryBroker | None = None, *, group: str = "default", ordered: bool = False
    ) -> None:
        self.broker = broker or MemoryBroker.named()
        self._group = self.broker.group(group)
        self._subscriptions: list[EventSubscription] = []
        self._running = False
        self._ordered = ordered
        self._stopped: asyncio.Future[None] | None = None
        # Lane pausing: messages of a paused lane taken off the group's inbox wait here, in
        # order, until it is resumed (and go back to the group on stop).
        self._paused: set[Hashable] = set()
        self._held: dict[Hashable, deque[Message]] = {}
        if ordered:  # an ordered consumer's lanes can be paused
            self.capabilities = dataclasses.replace(
                self.capabilities, ordered_lanes=True, pause_lanes=True
            )

    def pause(self, lane: Hashable) -> None:
        """Stop yielding messages of ``lane`` (a topic) until :meth:`resume`."""
        self._paused.add(lane)

    def resume(self, lane: Hashable) -> None:
        """Yield messages of ``lane`` again, those held meanwhile first."""
        self._paused.discard(lane)
        if self._held.get(lane) and self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)  # wake listen() to yield them

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        self._subscriptions.extend(subscriptions)
        if self._running:
            for sub in subscriptions:
                self.broker.bind(self._group, sub.compiled)

    async def start(self) -> None:
        for sub in self._subscriptions:
            self.broker.bind(self._group, sub.compiled)
        self._running = True

    async def listen(self) -> AsyncIterator[Message]:
        if not self._running:
            raise NotStartedError("The memory consumer is not started; call start() first.")
        inbox = self._group.queue
        items = inbox.items
        unacked = self._group.unacked
        ids = self.broker._ids
        ordered = self._ordered
        held = self._held
        while self._running:
            msg = self._resumed()
            if msg is None:
                if items:
                    msg = items.popleft()
                else:
                    got = await self._wait(inbox)
                    if got is None:
                        continue  # stopped, or a lane resumed
                    msg = got
                if ordered and (msg.route in self._paused or held.get(msg.route)):
                    held.setdefault(msg.route, deque()).append(msg)
                    continue
            token = next(ids)
            msg.token = token
            if ordered:
                msg.lane = msg.route
            unacked[token] = (msg, self)
            yield msg

    def _resumed(self) -> Message | None:
        """The next held message of a lane no longer paused."""
        for lane, waiting in self._held.items():
            if lane not in self._paused:
                msg = waiting.popleft()
                if not waiting:
                    del self._held[lane]
                return msg
        return None

    async def _wait(self, inbox: _Inbox) -> Message | None:
        """Wait for a message, for stop() or for a resumed lane, whichever comes first."""
        loop = asyncio.get_running_loop()
        stopped = self._stopped = loop.create_future()
        items = inbox.items
        while self._running:
            waiter: asyncio.Future[None] = loop.create_future()
            inbox.waiters.append(waiter)
            try:
                await asyncio.wait((waiter, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not waiter.done():
                    waiter.cancel()  # wake() skips it
            if self._running and items:
                return items.popleft()
            if stopped.done():
                break  # stopped, or a resumed lane has held messages to yield
        if items:
            inbox.wake()  # a wake-up this member will not use: pass it on to another
        return None

    async def ack(self, message: Message) -> None:
        self._group.unacked.pop(message.token, None)

    def reply_address(self, request: Message) -> str | None:
        """Request/reply: the requester's reply address, from the request's headers."""
        return request.headers.get(HEADER_REPLY_TO)

    async def send_reply(
        self, request: Message, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """Hand a reply to the requesting producer (dropped when it is gone)."""
        address = request.headers.get(HEADER_REPLY_TO)
        deliver = self.broker.reply_addresses.get(address) if address else None
        if deliver is None:
            log.debug("Reply to %s dropped: the requester is gone.", address)
            return
        deliver(Message(payload, route=address or "", headers=dict(headers)))

    async def nack(self, message: Message, *, requeue: bool) -> None:
        if self._group.unacked.pop(message.token, None) is None:
            return
        if requeue:
            self._requeue(message)
        else:
            self.broker.reject(message)

    def _requeue(self, message: Message) -> None:
        message.attempt += 1
        message.token = None
        self._group.queue.put_nowait(message)

    async def stop(self) -> None:
        self._running = False
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        for waiting in self._held.values():  # never delivered: back to the group as they are
            for msg in waiting:
                self._group.queue.put_nowait(msg)
        self._held.clear()
        self._paused.clear()

    async def close(self) -> None:
        """Hand every delivered-but-unsettled message of this consumer back to its group."""
        await self.stop()
        for token, (msg, owner) in list(self._group.unacked.items()):
            if owner is self:
                del self._group.unacked[token]
                self._requeue(msg)


def _broker_from_url(url: str) -> tuple[MemoryBroker, dict[str, str]]:
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/") or "default"
    return MemoryBroker.named(name), dict(parse_qsl(parts.query))


def producer_from_url(url: str, **options: Any) -> MemoryProducer:
    """Build a producer for ``memory://[name]``."""
    broker, _ = _broker_from_url(url)
    return MemoryProducer(broker, **options)


def consumer_from_url(url: str, **options: Any) -> MemoryConsumer:
    """Build a consumer for ``memory://[name][?group=g]``."""
    broker, query = _broker_from_url(url)
    if "group" in query:
        options.setdefault("group", query["group"])
    return MemoryConsumer(broker, **options)
