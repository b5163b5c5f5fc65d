"""The testing kit: run a service's own emitters and dispatchers on a private memory broker.

::

    async with dispytch.testing.memory(service.emitter, service.dispatcher) as kit:
        await kit.emit(SignUp(email="ada@example.com"))
        await kit.idle()
        kit.assert_emitted(UserRegistered, email="ada@example.com")
        kit.assert_nothing_else_emitted()

:func:`memory` swaps the producer of each :class:`~dispytch.EventEmitter` and the consumer
of each :class:`~dispytch.EventDispatcher` it is given for memory ones on one broker of its
own, starts them, and on exit stops them and puts the originals back. The service's code
does not change, and nothing is mocked: messages go through the memory transport with its
acknowledgements, redelivery and rejection, and through the dispatcher's real middleware
(retries, dead letters, timeouts, locks). A virtual clock (:mod:`dispytch.testing.clock`)
makes every wait on the loop instant.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.errors import PluginError
from dispytch.event import EventBase
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer
from dispytch.message import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Message
from dispytch.middleware.dead_letter import DeadLetter
from dispytch.plugins import serializer_for, serializers
from dispytch.routes import EventRoute
from dispytch.serialization import DecoderCache
from dispytch.testing.clock import VirtualClock
from dispytch.testing.faults import Faults
from dispytch.transport import OutgoingMessage

__all__ = ["Emitted", "Kit", "Match", "Recorder", "memory"]

_SHOWN = 20  # emissions listed in a failure message


def _event_type_of(cls: type) -> str:
    event_type = getattr(cls, "event_type", None)
    return str(event_type()) if callable(event_type) else cls.__name__


def _served() -> list[str]:
    return [spec.content_type for spec in serializers().values()]


@dataclass(frozen=True)
class Emitted:
    """One event as it was sent: where, with which headers, in which bytes.

    Attributes:
        index: Its place among everything the kit recorded (0-based).
        topic: The topic it was published to, placeholders filled.
        event_type: The ``dispytch-event-type`` header.
        payload: The serialised event.
        headers: Every header sent.
        key: The partitioning key, or ``None``.
    """

    index: int
    topic: str
    event_type: str | None
    payload: bytes
    headers: dict[str, str]
    key: bytes | None

    @property
    def event_id(self) -> str | None:
        """The ``dispytch-event-id`` header."""
        return self.headers.get(HEADER_EVENT_ID)

    def describe(self) -> str:
        text = self.payload[:160].decode("utf-8", "replace")
        more = "..." if len(self.payload) > 160 else ""
        return f"{self.index + 1}. {self.event_type or '?'} on {self.topic!r}: {text}{more}"


class Match:
    """An expected event: a class (by its event type), fields that must be equal, and
    optionally the topic. ``Match(UserRegistered, user_id=7)``; an event instance given
    to an assertion becomes a match of all its fields."""

    def __init__(self, event: type | EventBase, /, *, topic: str | None = None, **fields: Any):
        if isinstance(event, EventBase):
            fields = {**event.model_dump(), **fields}
            event = type(event)
        if not isinstance(event, type):
            raise TypeError(f"Expected an event class or instance, got {event!r}.")
        self.cls: type = event
        self.topic = topic
        self.fields = fields
        self.event_type = _event_type_of(event)

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.fields.items()]
        if self.topic is not None:
            args.append(f"topic={self.topic!r}")
        return f"{self.cls.__name__}({', '.join(args)})"


def _as_match(spec: type | EventBase | Match, topic: str | None, fields: dict[str, Any]) -> Match:
    if isinstance(spec, Match):
        if fields or topic is not None:
            raise TypeError("Give fields either in Match(...) or to the assertion, not both.")
        return spec
    return Match(spec, topic=topic, **fields)


class Recorder:
    """Every event sent through the kit's producers, with assertions over them.

    Assertions decode each recorded payload with the serializer its content type names
    (what went over the wire, not the object handed to ``emit``). Each emission an
    assertion matched counts as expected for :meth:`assert_nothing_else_emitted`.
    """

    def __init__(self) -> None:
        self.records: list[Emitted] = []
        self._expected: set[int] = set()
        self._decoders = DecoderCache(serializer_for, _served)

    def record(self, message: OutgoingMessage) -> None:
        topic = getattr(message.route, "topic", None)
        self.records.append(
            Emitted(
                index=len(self.records),
                topic=topic if isinstance(topic, str) else repr(message.route),
                event_type=message.headers.get(HEADER_EVENT_TYPE),
                payload=message.payload,
                headers=dict(message.headers),
                key=message.key,
            )
        )

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.records.clear()
        self._expected.clear()

    def decode(self, record: Emitted, cls: type) -> Any:
        """``record``'s payload as a ``cls``."""
        msg = Message(record.payload, route=record.topic, headers=dict(record.headers))
        return self._decoders.decode(msg, cls)

    def _matching(self, match: Match) -> list[tuple[Emitted, Any]]:
        found: list[tuple[Emitted, Any]] = []
        for record in self.records:
            if record.event_type != match.event_type:
                continue
            if match.topic is not None and record.topic != match.topic:
                continue
            try:
                event = self.decode(record, match.cls)
            except (PluginError, ValueError):
                continue
            if all(getattr(event, k, _MISSING) == v for k, v in match.fields.items()):
                found.append((record, event))
        return found

    def emitted(self, event: type | EventBase | Match | None = None, /, **fields: Any) -> list[Any]:
        """The decoded events matching (all recorded emissions without an argument: the
        :class:`Emitted` records themselves)."""
        if event is None:
            return list(self.records)
        return [ev for _, ev in self._matching(_as_match(event, None, fields))]

    def _listing(self, title: str = "Emitted") -> str:
        if not self.records:
            return f"{title}: nothing."
        lines = [f"{title} ({len(self.records)}):"]
        lines += ["  " + r.describe() for r in self.records[:_SHOWN]]
        if len(self.records) > _SHOWN:
            lines.append(f"  ... and {len(self.records) - _SHOWN} more")
        return "\n".join(lines)

    def assert_emitted(
        self,
        event: type | EventBase | Match,
        /,
        *,
        times: int | None = None,
        topic: str | None = None,
        **fields: Any,
    ) -> list[Any]:
        """Assert that an event of that class with those field values was emitted (at
        least once, or exactly ``times`` times); returns the matching events, decoded.

        Raises:
            AssertionError: Listing what was emitted instead.
        """
        match = _as_match(event, topic, fields)
        found = self._matching(match)
        ok = len(found) == times if times is not None else bool(found)
        if not ok:
            want = f"exactly {times} time(s)" if times is not None else "at least once"
            raise AssertionError(
                f"Expected {match!r} emitted {want}; it was emitted {len(found)} time(s).\n"
                + self._listing()
            )
        self._expected.update(r.index for r, _ in found)
        return [ev for _, ev in found]

    def assert_not_emitted(
        self, event: type | EventBase | Match, /, *, topic: str | None = None, **fields: Any
    ) -> None:
        """Assert that no such event was emitted.

        Raises:
            AssertionError: Listing what was emitted.
        """
        match = _as_match(event, topic, fields)
        found = self._matching(match)
        if found:
            where = ", ".join(str(r.index + 1) for r, _ in found)
            raise AssertionError(
                f"Expected no {match!r}; emitted as number {where}.\n" + self._listing()
            )

    def assert_emitted_in_order(self, *events: type | EventBase | Match) -> None:
        """Assert that events matching these were emitted in this order (others may come
        between them).

        Raises:
            AssertionError: Naming the first one not found after the previous.
        """
        position = -1
        chosen: list[int] = []
        for spec in events:
            match = _as_match(spec, None, {})
            later = [r for r, _ in self._matching(match) if r.index > position]
            if not later:
                got = ", ".join(repr(_as_match(s, None, {})) for s in events)
                raise AssertionError(
                    f"Expected in order: {got}; no {match!r} after number {position + 1}.\n"
                    + self._listing()
                )
            position = later[0].index
            chosen.append(position)
        self._expected.update(chosen)

    def assert_nothing_else_emitted(self) -> None:
        """Assert that every recorded emission was matched by an earlier assertion.

        Raises:
            AssertionError: Listing the emissions no assertion expected.
        """
        rest = [r for r in self.records if r.index not in self._expected]
        if rest:
            lines = [f"{len(rest)} emission(s) no assertion expected:"]
            lines += ["  " + r.describe() for r in rest[:_SHOWN]]
            raise AssertionError("\n".join(lines) + "\n" + self._listing("All emitted"))


_MISSING = object()


class KitProducer(MemoryProducer):
    """A memory producer that records what it sends and applies duplicate faults."""

    def __init__(self, broker: MemoryBroker, recorder: Recorder | None, faults: Faults) -> None:
        super().__init__(broker)
        self._recorder = recorder
        self._faults = faults

    async def send(self, message: OutgoingMessage) -> None:
        await super().send(message)
        if self._recorder is not None:
            self._recorder.record(message)
        topic = getattr(message.route, "topic", "")
        if self._faults.take_duplicate(str(topic), message.headers):
            await super().send(message)

    async def send_request(self, message: OutgoingMessage) -> None:
        """A command or query sent with ``emitter.request``: recorded like an event."""
        await super().send_request(message)
        if self._recorder is not None:
            self._recorder.record(message)


class KitConsumer(MemoryConsumer):
    """A memory consumer that applies crash-before-ack faults and reports what it holds."""

    def __init__(self, broker: MemoryBroker, *, group: str, ordered: bool, faults: Faults):
        super().__init__(broker, group=group, ordered=ordered)
        self._faults = faults
        self.group_name = group

    async def ack(self, message: Message) -> None:
        if self._faults.take_crash(message.route, message.headers):
            # The ack never reached the broker: it delivers the message again.
            if self._group.unacked.pop(message.token, None) is not None:
                self._requeue(message)
            return
        await super().ack(message)

    def pending(self) -> list[str]:
        """What this consumer's group still holds: queued and delivered-unsettled."""
        lines = [f"queued for {self.group_name!r}: {_describe(m)}" for m in self._group.queue.items]
        lines += [
            f"delivered to {self.group_name!r}, not settled: {_describe(m)}"
            for m, owner in self._group.unacked.values()
            if owner is self
        ]
        return lines


def _describe(msg: Message) -> str:
    etype = msg.headers.get(HEADER_EVENT_TYPE, "?")
    return f"{etype} on {msg.route!r} (attempt {msg.attempt})"


@dataclass
class _Swap:
    target: Any
    original: Any


class Kit:
    """One test's private memory broker, the swapped clients, the recorder, the clock and
    the faults. Made by :func:`memory`; use it as ``async with``.

    Attributes:
        broker: The private :class:`~dispytch.memory.MemoryBroker`.
        recorder: What the service emitted (the assertions below read it).
        faults: Fault injection (:class:`~dispytch.testing.faults.Faults`).
        clock: The virtual clock, or ``None`` when made with ``clock=False``.
        emitters: The swapped emitters.
        dispatchers: The swapped dispatchers.
    """

    def __init__(
        self,
        targets: Sequence[EventEmitter | EventDispatcher],
        *,
        clock: bool | VirtualClock = True,
        start: bool = True,
        ordered: bool = False,
    ) -> None:
        self.broker = MemoryBroker(f"kit-{uuid.uuid4().hex[:12]}")
        self.recorder = Recorder()
        self.faults = Faults()
        self.clock: VirtualClock | None = (
            clock if isinstance(clock, VirtualClock) else (VirtualClock() if clock else None)
        )
        self.emitters: list[EventEmitter] = []
        self.dispatchers: list[EventDispatcher] = []
        for target in targets:
            if isinstance(target, EventEmitter):
                self.emitters.append(target)
            elif isinstance(target, EventDispatcher):
                self.dispatchers.append(target)
            else:
                raise TypeError(
                    f"memory() takes EventEmitter and EventDispatcher objects, not "
                    f"{type(target).__name__}.\nPass the service's own emitter/dispatcher."
                )
        for dispatcher in self.dispatchers:
            # Where its command and query handlers' events go: part of the service too.
            own = getattr(dispatcher, "emitter", None)
            if isinstance(own, EventEmitter) and all(own is not e for e in self.emitters):
                self.emitters.append(own)
        self._start = start
        self._ordered = ordered
        self._swaps: list[_Swap] = []
        self._own_emitter: EventEmitter | None = None
        self._entered = False

    # -- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> Kit:
        if self._entered:
            raise RuntimeError("This kit is in use already; make a new one with memory().")
        for dispatcher in self.dispatchers:
            if dispatcher.running:
                raise RuntimeError(
                    f"Dispatcher {dispatcher.name!r} is running already; the kit swaps its "
                    "consumer before it starts.\nEnter the kit first (start=False lets your "
                    "own code start it afterwards)."
                )
        self._entered = True
        if self.clock is not None:
            self.clock.install()
        try:
            self._swap_in()
            self._own_emitter = EventEmitter(KitProducer(self.broker, None, self.faults))
            await self._own_emitter.start()
            if self._start:
                for emitter in self.emitters:
                    await emitter.start()
                for dispatcher in self.dispatchers:
                    await dispatcher.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def _swap_in(self) -> None:
        swapped: dict[int, KitProducer] = {}
        for emitter in self.emitters:
            self._swaps.append(_Swap(emitter, emitter.producer))
            new = KitProducer(self.broker, self.recorder, self.faults)
            swapped[id(emitter.producer)] = new
            emitter.producer = new
        for dispatcher in self.dispatchers:
            self._swap_dead_letters(dispatcher, swapped)
        for i, dispatcher in enumerate(self.dispatchers):
            group = f"kit-{i}-{dispatcher.name}"
            self._swaps.append(_Swap(dispatcher, dispatcher.consumer))
            dispatcher.consumer = KitConsumer(
                self.broker, group=group, ordered=self._ordered, faults=self.faults
            )

    def _swap_dead_letters(self, dispatcher: EventDispatcher, swapped: dict[int, Any]) -> None:
        """A DeadLetter middleware took its emitter's producer when it was made: point
        it at that emitter's kit producer too."""
        chains: list[tuple[str | None, tuple[Any, ...]]] = [(None, dispatcher.middlewares)]
        chains += [(spec.name, mws + spec.middlewares) for spec, mws in dispatcher.router.walk()]
        for handler, mws in chains:
            for mw in mws:
                if not isinstance(mw, DeadLetter) or any(s.target is mw for s in self._swaps):
                    continue
                new = swapped.get(id(mw.producer))
                if new is None:
                    raise RuntimeError(
                        f"A DeadLetter middleware (handler {handler or '(all)'!r}) publishes "
                        "with an emitter or producer the kit was not given.\n"
                        "Pass that emitter to dispytch.testing.memory(...) as well."
                    )
                self._swaps.append(_Swap(mw, mw.producer))
                mw.producer = new

    async def _close(self) -> None:
        try:
            # Dispatchers first (their handlers may still emit), then emitters.
            ordered = sorted(self._swaps, key=lambda s: not isinstance(s.target, EventDispatcher))
            for swap in ordered:
                if not isinstance(swap.target, DeadLetter):
                    await swap.target.stop()  # a no-op for what never started or stopped
            if self._own_emitter is not None:
                await self._own_emitter.stop()
        finally:
            for swap in self._swaps:
                if isinstance(swap.target, EventDispatcher):
                    swap.target.consumer = swap.original
                else:  # an emitter or a DeadLetter
                    swap.target.producer = swap.original
            self._swaps.clear()
            self.faults.restore()
            if self.clock is not None:
                self.clock.uninstall()

    # -- driving ----------------------------------------------------------------------
    async def emit(
        self,
        event: EventBase,
        *,
        headers: dict[str, str] | None = None,
        key: Any = None,
        route: EventRoute | None = None,
    ) -> None:
        """Publish ``event`` to the kit's broker from the test (not recorded: it is input,
        not something the service emitted)."""
        if self._own_emitter is None:
            raise RuntimeError("Enter the kit (async with) before emitting.")
        await self._own_emitter.emit(event, headers=headers, key=key, route=route)

    async def request(self, message: Any, **options: Any) -> Any:
        """Send a command or query from the test and return the reply (``EventEmitter.request``
        on the kit's broker: a swapped dispatcher's ``@router.command``/``@router.query``
        handler answers it). Not recorded, like :meth:`emit`."""
        if self._own_emitter is None:
            raise RuntimeError("Enter the kit (async with) before sending requests.")
        return await self._own_emitter.request(message, **options)

    def pending(self) -> list[str]:
        """What is not yet handled: messages queued or delivered-unsettled, per group, and
        messages the swapped dispatchers hold."""
        lines: list[str] = []
        for dispatcher in self.dispatchers:
            consumer = dispatcher.consumer
            if isinstance(consumer, KitConsumer):
                lines += consumer.pending()
            if dispatcher.in_flight and not isinstance(consumer, KitConsumer):
                lines.append(f"{dispatcher.name!r}: {dispatcher.in_flight} in flight")
        return lines

    def _busy(self) -> bool:
        for dispatcher in self.dispatchers:
            consumer = dispatcher.consumer
            if dispatcher.in_flight or dispatcher.unsettled:
                return True
            if isinstance(consumer, KitConsumer) and self.broker.pending(consumer.group_name):
                return True
        return False

    async def idle(self, timeout: float | None = None) -> None:
        """Wait until every message is handled and settled, those the handlers emitted
        meanwhile included (retries and redeliveries run to their end).

        Args:
            timeout: In loop seconds: virtual ones under the kit's clock (default 600,
                which costs no real time, so that long retry delays can run out), real
                ones without it (default 10).

        Raises:
            AssertionError: Not idle within ``timeout``; lists what is still pending.
            ConsumerClosedError: A swapped dispatcher stopped on its own (its failure).
        """
        virtual = self.clock is not None and self.clock.installed
        if timeout is None:
            timeout = 600.0 if virtual else 10.0
        # Poll: often at first, then less (under the clock a poll timer shorter than the
        # handlers' own would make the clock jump in its small steps).
        poll, cap = 0.001, (1.0 if virtual else 0.05)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet = 0
        while True:
            for dispatcher in self.dispatchers:
                if dispatcher.failure is not None:
                    raise dispatcher.failure
            if self._busy():
                quiet = 0
            else:
                quiet += 1
                if quiet >= 3:  # idle across a few loop turns: nothing was about to start
                    return
            if loop.time() >= deadline:
                pending = self.pending() or ["(nothing listed: a handler is still running)"]
                raise AssertionError(
                    f"Not idle after {timeout}s: {len(pending)} message(s) pending.\n  "
                    + "\n  ".join(pending[:_SHOWN])
                    + "\n"
                    + self.recorder._listing()
                )
            if quiet:
                await asyncio.sleep(0)
                poll = 0.001
            else:
                await asyncio.sleep(min(poll, max(0.0, deadline - loop.time())))
                poll = min(poll * 2, cap)

    # -- what happened ------------------------------------------------------------------
    @property
    def rejected(self) -> list[Message]:
        """Messages the failure policy rejected (``nack(requeue=False)``), in order."""
        return list(self.broker.rejected)

    @property
    def emitted(self) -> list[Emitted]:
        """Everything the service emitted, in order."""
        return list(self.recorder.records)

    def assert_emitted(
        self,
        event: type | EventBase | Match,
        /,
        *,
        times: int | None = None,
        topic: str | None = None,
        **fields: Any,
    ) -> list[Any]:
        """See :meth:`Recorder.assert_emitted`."""
        return self.recorder.assert_emitted(event, times=times, topic=topic, **fields)

    def assert_not_emitted(
        self, event: type | EventBase | Match, /, *, topic: str | None = None, **fields: Any
    ) -> None:
        """See :meth:`Recorder.assert_not_emitted`."""
        self.recorder.assert_not_emitted(event, topic=topic, **fields)

    def assert_emitted_in_order(self, *events: type | EventBase | Match) -> None:
        """See :meth:`Recorder.assert_emitted_in_order`."""
        self.recorder.assert_emitted_in_order(*events)

    def assert_nothing_else_emitted(self) -> None:
        """See :meth:`Recorder.assert_nothing_else_emitted`."""
        self.recorder.assert_nothing_else_emitted()


def memory(
    *targets: EventEmitter | EventDispatcher | Iterable[EventEmitter | EventDispatcher],
    clock: bool | VirtualClock = True,
    start: bool = True,
    ordered: bool = False,
) -> Kit:
    """A kit running ``targets`` on a private memory broker (use with ``async with``).

    Args:
        targets: The service's own emitters and dispatchers (or iterables of them).
        clock: Drive the loop with a :class:`~dispytch.testing.clock.VirtualClock`
            (default), pass your own, or ``False`` for real time.
        start: Start the swapped emitters and dispatchers on entry (stopped on exit
            either way). ``False`` when the code under test starts them itself, e.g. a
            FastAPI lifespan.
        ordered: Messages of one topic handled one at a time, in order (as on a
            Kafka partition).
    """
    flat: list[EventEmitter | EventDispatcher] = []
    for target in targets:
        if isinstance(target, (EventEmitter, EventDispatcher)):
            flat.append(target)
        elif isinstance(target, Iterable):
            flat.extend(target)
        else:
            flat.append(target)  # Kit names what it cannot take
    return Kit(flat, clock=clock, start=start, ordered=ordered)
