"""Typed records that plugins hand to Dispytch through the registration hooks.

Records are frozen dataclasses so that the plugin host can compare them, name the plugin
that returned each one when two collide, and hand them out without fear of mutation.
They validate themselves on construction: a malformed record is reported where the plugin
author builds it, not later on a user's machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispytch.transport import DEFAULT_CAPABILITIES, Capabilities

if TYPE_CHECKING:
    from dispytch.middleware.base import Middleware
    from dispytch.options import TransportOptions
    from dispytch.serialization import Serializer
    from dispytch.transport import Consumer, Producer

# RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*\Z")


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A {kind} needs a non-empty name, got {name!r}.")


@dataclass(frozen=True)
class TransportSpec:
    """A transport a plugin provides.

    Attributes:
        name: Short unique name (``"kafka"``).
        schemes: URL schemes it serves (``("kafka",)``), lower case, without ``://``.
        producer_factory: ``(url, **options) -> Producer``; imports the broker library
            when called, so that discovering plugins stays cheap.
        consumer_factory: ``(url, **options) -> Consumer``; same rule.
        description: One line for ``dispytch plugins``, delivery guarantee included.
        route_types: The route classes it accepts (besides ``TopicRoute``).
        subscription_types: The subscription classes it accepts (besides
            ``TopicSubscription``).
        capabilities: What its consumers can do (delivery guarantee, ordered lanes,
            requeue, delayed requeue, lane pausing, lease extension, request/reply).
        options_model: The :class:`~dispytch.options.TransportOptions` subclass its
            factories accept (URL query and keyword arguments alike), for listings.

    Raises:
        ValueError: When the name is empty, no scheme is given, or a scheme is not a
            valid lower-case URL scheme.
        TypeError: When a factory is not callable.
    """

    name: str
    schemes: tuple[str, ...]
    producer_factory: Callable[..., Producer]
    consumer_factory: Callable[..., Consumer]
    description: str = ""
    route_types: tuple[type, ...] = ()
    subscription_types: tuple[type, ...] = ()
    capabilities: Capabilities = DEFAULT_CAPABILITIES
    options_model: type[TransportOptions] | None = None

    def __post_init__(self) -> None:
        _check_name("transport", self.name)
        schemes = (self.schemes,) if isinstance(self.schemes, str) else tuple(self.schemes)
        if not schemes:
            raise ValueError(f"Transport {self.name!r} must serve at least one URL scheme.")
        for scheme in schemes:
            if not isinstance(scheme, str) or not _SCHEME.match(scheme):
                raise ValueError(
                    f"Transport {self.name!r} declares the scheme {scheme!r}; write it in "
                    "lower case without '://', e.g. 'kafka' or 'redis+streams'."
                )
        for attr in ("producer_factory", "consumer_factory"):
            if not callable(getattr(self, attr)):
                raise TypeError(
                    f"Transport {self.name!r}: {attr} must be a callable (url, **options)."
                )
        # Accept lists from plugin authors, store tuples so the record stays hashable.
        object.__setattr__(self, "schemes", schemes)
        object.__setattr__(self, "route_types", tuple(self.route_types))
        object.__setattr__(self, "subscription_types", tuple(self.subscription_types))


@dataclass(frozen=True)
class SerializerSpec:
    """A payload format.

    Attributes:
        name: Short name users pass (``"json"``, ``"msgpack"``).
        content_type: The MIME type written to the content-type header; the consuming
            side picks the decoder by it.
        factory: ``() -> Serializer``; called once, lazily, on first use.
        description: One line for ``dispytch plugins``.

    Raises:
        ValueError: When the name or content type is empty.
        TypeError: When the factory is not callable.
    """

    name: str
    content_type: str
    factory: Callable[[], Serializer]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("serializer", self.name)
        if not isinstance(self.content_type, str) or "/" not in self.content_type:
            raise ValueError(
                f"Serializer {self.name!r} needs a MIME content type such as "
                f"'application/cbor', got {self.content_type!r}."
            )
        if not callable(self.factory):
            raise TypeError(f"Serializer {self.name!r}: factory must be a callable () -> ...")


@dataclass(frozen=True)
class MiddlewareSpec:
    """A middleware that stacks can name (``"retry"``, ``"dead-letter"``).

    A named middleware runs only where a user names it: installing its plugin adds
    nothing to any stack.

    Attributes:
        name: The name users write in a stack.
        factory: ``(**options) -> Middleware``.
        description: One line for ``dispytch plugins``.

    Raises:
        ValueError: When the name is empty.
        TypeError: When the factory is not callable.
    """

    name: str
    factory: Callable[..., Middleware]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("middleware", self.name)
        if not callable(self.factory):
            raise TypeError(f"Middleware {self.name!r}: factory must be a callable (**options).")


@dataclass(frozen=True)
class JournalStoreSpec:
    """A durable-functions journal store a plugin provides (``postgresql://``...).

    Attributes:
        name: The store's name (``"postgres"``).
        schemes: URL schemes it serves, lower case, without ``://``.
        factory: ``(url) -> JournalStore`` (a :class:`dispytch.durable.JournalStore`);
            called when a ``Durable`` is built with such a URL, so it must not connect.
        description: One line for ``dispytch plugins``.

    Raises:
        ValueError: When the name is empty or a scheme is malformed.
        TypeError: When the factory is not callable.
    """

    name: str
    schemes: tuple[str, ...]
    factory: Callable[[str], Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("journal store", self.name)
        schemes = (self.schemes,) if isinstance(self.schemes, str) else tuple(self.schemes)
        if not schemes:
            raise ValueError(f"Journal store {self.name!r} must serve at least one URL scheme.")
        for scheme in schemes:
            if not isinstance(scheme, str) or not _SCHEME.match(scheme):
                raise ValueError(
                    f"Journal store {self.name!r} declares the scheme {scheme!r}; write it "
                    "in lower case without '://', e.g. 'postgresql'."
                )
        if not callable(self.factory):
            raise TypeError(f"Journal store {self.name!r}: factory must be a callable (url).")
        object.__setattr__(self, "schemes", schemes)


@dataclass(frozen=True)
class PluginInfo:
    """What ``dispytch plugins`` shows for one registered plugin.

    Attributes:
        name: The plugin's name: its entry-point name, ``"builtin"`` for core's own, or
            the name it was registered under in-process.
        distribution: The distribution that ships it, when known.
        version: That distribution's version, when known.
        entry_point: ``module:attribute`` the plugin was loaded from, when it came from an
            entry point.
        transports: What its ``dispytch_transports`` hook returned.
        serializers: What its ``dispytch_serializers`` hook returned.
        middlewares: What its ``dispytch_middlewares`` hook returned.
        hooks: Names of the hooks it implements.
        extra: Free-form details for tools.
    """

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None = None
    transports: tuple[TransportSpec, ...] = ()
    serializers: tuple[SerializerSpec, ...] = ()
    middlewares: tuple[MiddlewareSpec, ...] = ()
    hooks: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``dispytch plugins --json`` prints)."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "hooks": list(self.hooks),
            "transports": [
                {
                    "name": t.name,
                    "schemes": list(t.schemes),
                    "description": t.description,
                    "capabilities": t.capabilities.to_dict(),
                    "options": t.options_model.describe() if t.options_model else [],
                }
                for t in self.transports
            ],
            "serializers": [
                {"name": s.name, "content_type": s.content_type, "description": s.description}
                for s in self.serializers
            ],
            "middlewares": [
                {"name": m.name, "description": m.description} for m in self.middlewares
            ],
        }
