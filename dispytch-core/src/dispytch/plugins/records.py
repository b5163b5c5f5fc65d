"""Typed records that plugins hand to Dispytch through the registration hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispytch.middleware.base import Middleware
    from dispytch.serialization import Serializer
    from dispytch.transport import Consumer, Producer


@dataclass(frozen=True)
class TransportSpec:
    """A transport a plugin provides.

    Attributes:
        name: Short unique name (``"kafka"``).
        schemes: URL schemes it serves (``("kafka",)``).
        producer_factory: ``(url, **options) -> Producer``; imports the broker library
            lazily, so that discovering plugins stays cheap.
        consumer_factory: ``(url, **options) -> Consumer``.
        description: One line for ``dispytch plugins``: delivery guarantee included.
        route_types: The route classes it accepts (besides ``TopicRoute``).
        subscription_types: The subscription classes it accepts (besides
            ``TopicSubscription``).
    """

    name: str
    schemes: tuple[str, ...]
    producer_factory: Callable[..., Producer]
    consumer_factory: Callable[..., Consumer]
    description: str = ""
    route_types: tuple[type, ...] = ()
    subscription_types: tuple[type, ...] = ()


@dataclass(frozen=True)
class SerializerSpec:
    """A payload format.

    Attributes:
        name: Short name users pass (``"json"``, ``"msgpack"``).
        content_type: The MIME type written to the content-type header.
        factory: ``() -> Serializer``; called once, lazily.
        description: One line for ``dispytch plugins``.
    """

    name: str
    content_type: str
    factory: Callable[[], Serializer]
    description: str = ""


@dataclass(frozen=True)
class MiddlewareSpec:
    """A middleware that stacks can name (``"retry"``, ``"dead-letter"``).

    A named middleware runs only where a user names it: installing its plugin adds
    nothing to any stack.

    Attributes:
        name: The name users write in a stack.
        factory: ``(**options) -> Middleware``.
        description: One line for ``dispytch plugins``.
    """

    name: str
    factory: Callable[..., Middleware]
    description: str = ""


@dataclass(frozen=True)
class PluginInfo:
    """What ``dispytch plugins`` shows for one registered plugin."""

    name: str
    distribution: str | None
    version: str | None
    transports: tuple[TransportSpec, ...] = ()
    serializers: tuple[SerializerSpec, ...] = ()
    middlewares: tuple[MiddlewareSpec, ...] = ()
    hooks: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
