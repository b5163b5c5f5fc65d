"""Core's own plugin: the memory transport, JSON and msgpack, the built-in middleware.

Registered through the same hooks as any third-party plugin, so nothing about built-ins
is special to the plugin host. Like any well-behaved plugin it imports what its factories
build only when they are called: listing plugins does not import the middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dispytch.plugins.hookspecs import hookimpl
from dispytch.plugins.records import MiddlewareSpec, SerializerSpec, TransportSpec
from dispytch.serialization import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    JsonSerializer,
    MsgpackSerializer,
)
from dispytch.transport import Capabilities


def _memory_producer(url: str, **options: Any) -> Any:
    from dispytch.memory import producer_from_url

    return producer_from_url(url, **options)


def _memory_consumer(url: str, **options: Any) -> Any:
    from dispytch.memory import consumer_from_url

    return consumer_from_url(url, **options)


@hookimpl
def dispytch_transports() -> list[TransportSpec]:
    from dispytch.memory import MemoryEventRoute

    return [
        TransportSpec(
            name="memory",
            schemes=("memory",),
            producer_factory=_memory_producer,
            consumer_factory=_memory_consumer,
            description="in-process broker with consumer groups; at-least-once within the process",
            route_types=(MemoryEventRoute,),
            capabilities=Capabilities(request_reply=True),
        )
    ]


@hookimpl
def dispytch_serializers() -> list[SerializerSpec]:
    return [
        SerializerSpec(
            name="json",
            content_type=JSON_CONTENT_TYPE,
            factory=JsonSerializer,
            description="JSON through pydantic-core (default)",
        ),
        SerializerSpec(
            name="msgpack",
            content_type=MSGPACK_CONTENT_TYPE,
            factory=MsgpackSerializer,
            description="MessagePack (needs dispytch-core[msgpack])",
        ),
    ]


def _lazy_middleware(class_name: str) -> Callable[..., Any]:
    """A factory that imports :mod:`dispytch.middleware` only when a stack names it."""

    def factory(*args: Any, **options: Any) -> Any:
        from dispytch import middleware

        return getattr(middleware, class_name)(*args, **options)

    factory.__name__ = factory.__qualname__ = class_name
    factory.__doc__ = f"Build :class:`dispytch.middleware.{class_name}` with these options."
    return factory


@hookimpl
def dispytch_middlewares() -> list[MiddlewareSpec]:
    return [
        MiddlewareSpec(
            "retry", _lazy_middleware("Retry"), "retry failed handlers with exponential backoff"
        ),
        MiddlewareSpec(
            "dead-letter",
            _lazy_middleware("DeadLetter"),
            "publish finally failed messages to a dead-letter route",
        ),
        MiddlewareSpec(
            "lock", _lazy_middleware("AsyncLock"), "serialise handling, globally or per key"
        ),
        MiddlewareSpec("filter", _lazy_middleware("Filter"), "skip events a predicate rejects"),
        MiddlewareSpec(
            "timeout", _lazy_middleware("Timeout"), "fail a handler that runs past a deadline"
        ),
        MiddlewareSpec(
            "observe", _lazy_middleware("Observe"), "log timing and outcome of every handling"
        ),
    ]
