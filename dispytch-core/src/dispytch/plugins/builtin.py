"""Core's own plugin: the memory transport, JSON and msgpack, the built-in middleware.

Registered through the same hooks as any third-party plugin, so nothing about built-ins
is special to the plugin host.
"""

from __future__ import annotations

from typing import Any

from dispytch.plugins.hookspecs import hookimpl
from dispytch.plugins.records import MiddlewareSpec, SerializerSpec, TransportSpec
from dispytch.serialization import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    JsonSerializer,
    MsgpackSerializer,
)


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


@hookimpl
def dispytch_middlewares() -> list[MiddlewareSpec]:
    from dispytch.middleware import AsyncLock, DeadLetter, Filter, Observe, Retry, Timeout

    return [
        MiddlewareSpec("retry", Retry, "retry failed handlers with exponential backoff"),
        MiddlewareSpec("dead-letter", DeadLetter, "publish finally failed messages elsewhere"),
        MiddlewareSpec("lock", AsyncLock, "serialise handling, globally or per key"),
        MiddlewareSpec("filter", Filter, "skip events a predicate rejects"),
        MiddlewareSpec("timeout", Timeout, "fail a handler that runs past a deadline"),
        MiddlewareSpec("observe", Observe, "log timing and outcome of every handling"),
    ]
