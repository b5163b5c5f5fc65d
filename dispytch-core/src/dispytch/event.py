"""Events: :class:`EventBase` for what you emit, :class:`Event` for what a handler gets."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from dispytch.message import HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_TIMESTAMP, Message
from dispytch.routes import EventRoute, TopicRoute

T = TypeVar("T")


class EventBase(BaseModel):
    """Base class of the events you emit.

    Say where it goes with ``__route__`` (a transport's route, e.g.
    ``KafkaEventRoute(topic="user_events")``), or with the older ``__topic__`` plus
    ``__event_type__`` pair. The event type travels in the ``dispytch-event-type`` header,
    so several event types can share one topic; it defaults to the class name.

    Example::

        class UserRegistered(EventBase):
            __route__ = KafkaEventRoute(topic="user.{user_id}.events")
            __event_type__ = "user_registered"

            user_id: int
            email: str
    """

    __route__: ClassVar[EventRoute | None] = None
    __topic__: ClassVar[str | None] = None
    __event_type__: ClassVar[str | None] = None

    @classmethod
    def event_route(cls) -> EventRoute:
        """The route events of this class are emitted to.

        Raises:
            TypeError: When the class names neither ``__route__`` nor ``__topic__``.
        """
        route = cls.__dict__.get("_dispytch_route")
        if route is not None:
            return route  # type: ignore[no-any-return]
        if cls.__route__ is not None:
            route = cls.__route__
        elif cls.__topic__:
            route = TopicRoute(topic=cls.__topic__)
        else:
            raise TypeError(
                f"{cls.__name__} has no route. Set __route__ = <Transport>EventRoute(...) "
                "(or the older __topic__ = '...') on the class."
            )
        type.__setattr__(cls, "_dispytch_route", route)
        return route

    @classmethod
    def event_type(cls) -> str:
        """The event type written to the ``dispytch-event-type`` header."""
        return cls.__event_type__ or cls.__name__


def declared_event_type(model: Any) -> str | None:
    """The event type a handler of ``Event[model]`` should be limited to, if any.

    Only an explicit ``__event_type__`` narrows a handler; a plain model (or an
    ``EventBase`` without one) receives every event on its route.
    """
    return getattr(model, "__event_type__", None) if isinstance(model, type) else None


class Event(Generic[T]):
    """What a handler receives: the validated ``body`` and everything around it.

    Attributes:
        body: The payload, validated into ``T`` straight from the bytes.
        id: The event id written by the emitter (empty when the producer was not Dispytch).
        type: The event type header, or ``None``.
        route: The concrete route the message came on (topic, routing key, channel).
        timestamp: When it was emitted, if the emitter said; else when it was received.
        headers: All message headers.
        attempt: Delivery attempt, 1 for the first.
        metadata: The transport's message metadata (partition, offset, delivery tag, ...).
        params: Named route segments captured by the subscription pattern (as text).
    """

    __slots__ = ("_message", "body", "params")

    def __init__(self, body: T, message: Message, params: Mapping[str, str] | None = None):
        self.body = body
        self._message = message
        self.params: Mapping[str, str] = params or {}

    @property
    def message(self) -> Message:
        """The raw transport message."""
        return self._message

    @property
    def id(self) -> str:
        return self._message.headers.get(HEADER_EVENT_ID, "")

    @property
    def type(self) -> str | None:
        return self._message.headers.get(HEADER_EVENT_TYPE)

    @property
    def route(self) -> str:
        return self._message.route

    @property
    def headers(self) -> Mapping[str, str]:
        return self._message.headers

    @property
    def attempt(self) -> int:
        return self._message.attempt

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._message.metadata

    @property
    def timestamp(self) -> datetime:
        raw = self._message.headers.get(HEADER_TIMESTAMP)
        if raw:
            try:
                return datetime.fromtimestamp(float(raw), tz=UTC)
            except ValueError:
                pass
        return datetime.now(tz=UTC)

    def __repr__(self) -> str:
        return f"Event(route={self.route!r}, type={self.type!r}, body={self.body!r})"
