"""Routes (where an event is published) and subscriptions (what a handler consumes).

Each transport defines its own frozen dataclasses on top of :class:`EventRoute` and
:class:`EventSubscription` (``KafkaEventRoute``, ``RabbitMQEventSubscription``, ...).
:class:`TopicRoute` and :class:`TopicSubscription` are transport-neutral: every
transport accepts them, which is what the older ``__topic__`` events and the
``handler(topic=...)`` registrations use.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from dispytch.message import Message
from dispytch.patterns import RoutePattern

if TYPE_CHECKING:
    from typing import Self

_formatter = string.Formatter()

KeySpec = str | Callable[[Any], Any] | None


@dataclass(frozen=True, kw_only=True)
class EventRoute:
    """Base class of routes: where an event goes.

    Text fields may hold ``{field}`` placeholders filled from the event's fields when it
    is emitted (``topic="user.{user_id}.events"``), attributes of nested models included
    (``"user.{user.id}.events"``).

    Attributes:
        key: The partitioning key: the name of an event field, or a callable taking the
            event. ``None`` for no key.
        headers: Static headers to publish with every event on this route.
    """

    key: KeySpec = None
    headers: Mapping[str, str] | None = None

    #: The fields that name the destination; a subclass lists its own.
    address_fields: ClassVar[tuple[str, ...]] = ()

    @cached_property
    def _templates(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("key", "headers") or not isinstance(value, str):
                continue
            # "{user.id}" / "{tags[0]}" need the field "user" / "tags"; format_map does
            # the attribute and item access.
            names = tuple(
                dict.fromkeys(
                    re.split(r"[.\[]", n, maxsplit=1)[0]
                    for _, n, _, _ in _formatter.parse(value)
                    if n
                )
            )
            if names:
                out.append((f.name, names))
        return tuple(out)

    @property
    def is_dynamic(self) -> bool:
        """True when some field holds placeholders to fill from the event."""
        return bool(self._templates)

    def resolve(self, event: Any) -> Self:
        """Return this route with every placeholder filled from ``event``'s fields.

        Raises:
            ValueError: When the event has no field a placeholder names.
        """
        templates = self._templates
        if not templates:
            return self
        changes: dict[str, Any] = {}
        for name, placeholders in templates:
            try:
                values = {p: getattr(event, p) for p in placeholders}
            except AttributeError as exc:
                raise ValueError(
                    f"Route {self!r} needs the field {exc.name!r}, which "
                    f"{type(event).__name__} does not have. Add the field or fix the route."
                ) from None
            template = getattr(self, name)
            try:
                changes[name] = template.format_map(values)
            except (AttributeError, LookupError) as exc:
                raise ValueError(
                    f"Route {self!r}: cannot fill {template!r} from "
                    f"{type(event).__name__}: {type(exc).__name__}: {exc}. Fix the route."
                ) from None
        return dataclasses.replace(self, **changes)

    def key_for(self, event: Any) -> bytes | None:
        """The partitioning key of ``event`` on this route, as bytes."""
        spec = self.key
        if spec is None:
            return None
        value = spec(event) if callable(spec) else getattr(event, spec)
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        return str(value).encode()

    @property
    def address(self) -> str:
        """A readable destination, for logs and dead-letter headers."""
        return "/".join(str(getattr(self, n)) for n in self.address_fields) or repr(self)


@dataclass(frozen=True, kw_only=True)
class TopicRoute(EventRoute):
    """A transport-neutral route: a topic name that every transport maps to its own terms.

    Kafka: the topic. RabbitMQ: the routing key, on the producer's default exchange.
    Redis: the channel. Memory: the topic.
    """

    topic: str
    address_fields: ClassVar[tuple[str, ...]] = ("topic",)


@dataclass(frozen=True, kw_only=True)
class EventSubscription:
    """Base class of subscriptions: which messages a handler receives.

    A subscription gives the dispatcher a :class:`~dispytch.patterns.RoutePattern`
    matched against :attr:`Message.route <dispytch.transport.Message.route>`; a transport
    may narrow it further with :meth:`accepts` (a RabbitMQ exchange or queue, say).
    """

    @property
    def route_pattern(self) -> str:
        """The pattern that ``Message.route`` must match. Subclasses override it."""
        raise NotImplementedError

    @cached_property
    def compiled(self) -> RoutePattern:
        """The compiled :attr:`route_pattern`."""
        return RoutePattern(self.route_pattern)

    #: Set to True by subclasses that implement :meth:`accepts`.
    filters_messages: ClassVar[bool] = False

    def accepts(self, message: Message) -> bool:
        """Transport-specific narrowing beyond the route pattern (default: accept)."""
        return True


@dataclass(frozen=True, kw_only=True)
class TopicSubscription(EventSubscription):
    """A transport-neutral subscription to a topic name or pattern."""

    topic: str

    @property
    def route_pattern(self) -> str:
        return self.topic
