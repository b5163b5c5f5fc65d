"""``EventEmitter``: serialise events and hand them to a producer."""

from __future__ import annotations

import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from dispytch.cqrs.errors import RequestReplyUnsupportedError
from dispytch.cqrs.handlers import Requester
from dispytch.cqrs.wire import RequestSender
from dispytch.errors import EmitTimeoutError
from dispytch.event import EventBase
from dispytch.plugins import notify, serializer_for, serializers, transport_for_url
from dispytch.routes import EventRoute
from dispytch.serialization import DecoderCache, Serializer
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_TIMESTAMP,
    OutgoingMessage,
    Producer,
)

log = logging.getLogger("dispytch.emitter")

TimeoutCallback = Callable[[EventBase], Any | Awaitable[Any]]


class EventEmitter:
    """Publishes :class:`~dispytch.EventBase` events through a producer.

    Example::

        emitter = EventEmitter(KafkaProducer(raw_producer))
        await emitter.emit(UserRegistered(user=user, timestamp=now))

    A producer that was never started, or is closed, makes :meth:`emit` raise
    :class:`~dispytch.NotStartedError`: events never vanish silently.

    Args:
        producer: The transport's producer.
        serializer: A serializer name (``"json"``, ``"msgpack"``, a plugin's) or object.
        owns_producer: Start and stop the producer with the emitter (set by ``from_url``).
    """

    def __init__(
        self,
        producer: Producer,
        *,
        serializer: str | Serializer = "json",
        owns_producer: bool = False,
    ) -> None:
        self.producer = producer
        if isinstance(serializer, str):
            serializer = serializer_for(serializer)
        self.serializer: Serializer = serializer
        self._encode = serializer.encode
        self._content_type = serializer.content_type
        self.owns_producer = owns_producer
        self._timeout_callbacks: list[TimeoutCallback] = []
        self._started = False
        self._plans: dict[type, tuple[EventRoute, bool, bool, dict[str, str]]] = {}
        # Event ids: 64 random bits per emitter, then a counter: unique, and cheaper than
        # a uuid4 per event.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._requester: Requester | None = None

    @classmethod
    def from_url(
        cls, url: str, *, serializer: str | Serializer = "json", **options: Any
    ) -> EventEmitter:
        """Build an emitter whose producer comes from the plugin serving ``url``.

        The emitter owns the producer: :meth:`start` connects it, :meth:`stop` closes it.

        Raises:
            TransportNotFoundError: No installed plugin serves the scheme (the message says
                what to install).
        """
        spec = transport_for_url(url)
        return cls(spec.producer_factory(url, **options), serializer=serializer, owns_producer=True)

    async def start(self) -> None:
        """Start the producer."""
        await self.producer.start()
        self._started = True
        notify("dispytch_emitter_started", emitter=self)

    async def stop(self) -> None:
        """Flush and stop the producer."""
        if not self._started:
            return
        self._started = False
        if self._requester is not None:
            self._requester.close()  # waiting requests fail now, not at their timeout
        await self.producer.stop()
        notify("dispytch_emitter_stopped", emitter=self)

    async def __aenter__(self) -> EventEmitter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def on_timeout(self, callback: TimeoutCallback) -> TimeoutCallback:
        """Register a (sync or async) callback receiving events whose delivery timed out.

        With a callback, a timed-out :meth:`emit` calls it and returns; without one, it
        raises :class:`~dispytch.EmitTimeoutError`. Usable as a decorator.
        """
        self._timeout_callbacks.append(callback)
        return callback

    def build(
        self,
        event: EventBase,
        *,
        headers: Mapping[str, str] | None = None,
        key: Any = None,
        route: EventRoute | None = None,
        stamp: str | None = None,
    ) -> OutgoingMessage:
        """Serialise ``event`` into the record its producer sends (routes resolved).

        ``stamp`` is the ``dispytch-timestamp`` header (default: now); a batch shares one.
        """
        cls = type(event)
        if route is None:
            plan = self._plans.get(cls)
            if plan is None:
                plan = self._plan(cls, cls.event_route())
        else:
            plan = self._plan(cls, route)
        base_route, dynamic, keyed, base_headers = plan
        resolved = base_route.resolve(event) if dynamic else base_route
        if key is None:
            key_bytes = resolved.key_for(event) if keyed else None
        elif isinstance(key, bytes):
            key_bytes = key
        else:
            key_bytes = str(key).encode()
        hdrs = base_headers.copy()
        hdrs[HEADER_EVENT_ID] = f"{self._id_prefix}{next(self._ids):016x}"
        hdrs[HEADER_TIMESTAMP] = stamp or f"{time.time():.6f}"
        if headers:
            hdrs.update(headers)
        return OutgoingMessage(resolved, self._encode(event), hdrs, key_bytes)

    def _plan(
        self, cls: type[EventBase], route: EventRoute
    ) -> tuple[EventRoute, bool, bool, dict[str, str]]:
        """What does not change between events of one class on one route."""
        base_headers = {
            HEADER_EVENT_TYPE: cls.__event_type__ or cls.__name__,
            HEADER_CONTENT_TYPE: self._content_type,
        }
        if route.headers:
            base_headers.update(route.headers)
        plan = (route, route.is_dynamic, route.key is not None, base_headers)
        if route is cls.__dict__.get("_dispytch_route"):
            self._plans[cls] = plan
        return plan

    async def emit(
        self,
        event: EventBase,
        *,
        headers: Mapping[str, str] | None = None,
        key: Any = None,
        route: EventRoute | None = None,
    ) -> None:
        """Publish one event and return once the broker has it.

        Args:
            event: The event; its class's ``__route__`` (or ``__topic__``) says where to.
            headers: Extra headers. A ``dispytch-deadline`` among them (an upstream
                request's, forwarded) replaces the one made from ``timeout``.
            key: Overrides the route's key.
            route: Overrides the class's route.

        Raises:
            NotStartedError: The producer is not started or closed.
            EmitTimeoutError: Not confirmed in time and no ``on_timeout`` callback is set.
            EmitError: The broker refused it.
        """
        message = self.build(event, headers=headers, key=key, route=route)
        try:
            await self.producer.send(message)
        except (TimeoutError, EmitTimeoutError) as exc:
            await self._timed_out([event], exc)

    async def emit_batch(
        self,
        events: Iterable[EventBase],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish many events without waiting for each in turn; return when all are in.

        Raises the first error after every event was attempted (see :meth:`emit`). After
        a timeout the ``on_timeout`` callbacks get each event that was not confirmed, once:
        the ones the producer names in ``EmitTimeoutError.undelivered``, or every event of
        the batch when the producer cannot say which were confirmed.
        """
        evs = list(events)
        stamp = f"{time.time():.6f}"
        messages = [self.build(e, headers=headers, stamp=stamp) for e in evs]
        try:
            await self.producer.send_batch(messages)
        except (TimeoutError, EmitTimeoutError) as exc:
            undelivered = exc.undelivered if isinstance(exc, EmitTimeoutError) else None
            if undelivered is not None:
                late = {id(m) for m in undelivered}
                evs = [e for e, m in zip(evs, messages, strict=True) if id(m) in late]
            await self._timed_out(evs, exc)

    async def _timed_out(self, events: list[EventBase], exc: BaseException) -> None:
        if not self._timeout_callbacks:
            log.warning("Emitting %d event(s) timed out: %s", len(events), exc)
            if isinstance(exc, EmitTimeoutError):
                raise exc
            raise EmitTimeoutError(f"The broker did not confirm in time: {exc}") from exc
        for event in events:
            for cb in self._timeout_callbacks:
                result = cb(event)
                if inspect.isawaitable(result):
                    await result

    async def request(
        self,
        message: EventBase,
        *,
        timeout: float = 30.0,
        reply: Any = None,
        headers: Mapping[str, str] | None = None,
        key: Any = None,
        route: EventRoute | None = None,
        errors: Sequence[type[BaseException]] = (),
    ) -> Any:
        """Send a command or query and return its handler's reply, typed.

        The request carries a correlation id and an absolute deadline (now + ``timeout``);
        a responder that gets it later does not run it. Replies come back to one reply
        address per process, however many requests are outstanding. Cancelling the
        awaiting task is local: the request stays sent.

        Args:
            message: A ``CommandBase`` / ``QueryBase`` (or any ``EventBase``) instance.
            timeout: Seconds to wait for the reply.
            reply: The reply type; by default the ``R`` of ``QueryBase[R]`` /
                ``CommandBase[R]``.
            headers: Extra headers. A ``dispytch-deadline`` among them (an upstream
                request's, forwarded) replaces the one made from ``timeout``.
            key: Overrides the route's key.
            route: Overrides the class's route.
            errors: Exception types raised as themselves when the handler raises one of
                that name (see also :meth:`register_error`).

        Raises:
            RemoteError: The handler raised (at once, never as a timeout).
            RequestTimeoutError: No reply within ``timeout``.
            RequestExpiredError: The request reached its handler after its deadline.
            NoRouteError: Nothing can receive it (raised at once).
            RequestReplyUnsupportedError: The transport cannot carry replies.
        """
        requester = self._requester
        if requester is None:
            requester = self._requester = self._make_requester()
        return await requester.request(
            message,
            timeout=timeout,
            reply=reply,
            headers=headers,
            key=key,
            route=route,
            errors=errors,
        )

    def register_error(self, *types: type[BaseException]) -> None:
        """Raise these exception types as themselves (by class name) when a request's
        handler raises one, instead of :class:`~dispytch.cqrs.RemoteError`."""
        requester = self._requester
        if requester is None:
            requester = self._requester = self._make_requester()
        for tp in types:
            requester.errors[tp.__name__] = tp

    def _make_requester(self) -> Requester:
        producer = self.producer
        if not isinstance(producer, RequestSender):
            raise RequestReplyUnsupportedError(
                f"{type(producer).__name__} cannot carry requests: its transport has no "
                "request_reply capability.\nUse a transport that has it (memory://, "
                "amqp://), or send the command without waiting with emit()."
            )
        decoders = DecoderCache(
            serializer_for, lambda: [s.content_type for s in serializers().values()]
        )
        return Requester(producer, self.build, decoders.decode)
