"""The plugin's registration module (entry point ``sample`` in group ``dispytch``).

It imports nothing heavy at module level: the factories import the transport, the
serializer and the middleware only when Dispytch calls them, exactly as a plugin over a
real broker library must.
"""

from __future__ import annotations

import logging
from typing import Any

from dispytch.plugins import MiddlewareSpec, SerializerSpec, TransportSpec, hookimpl
from dispytch.transport import Capabilities

log = logging.getLogger("dispytch_sample")


def _producer(url: str, **options: Any) -> Any:
    from dispytch_sample.transport import SpoolProducer

    return SpoolProducer.from_url(url, **options)


def _consumer(url: str, **options: Any) -> Any:
    from dispytch_sample.transport import SpoolConsumer

    return SpoolConsumer.from_url(url, **options)


def _serializer() -> Any:
    from dispytch_sample.serializer import GzipJsonSerializer

    return GzipJsonSerializer()


def _audit(**options: Any) -> Any:
    from dispytch_sample.middleware import Audit

    return Audit(**options)


@hookimpl
def dispytch_transports() -> list[TransportSpec]:
    from dispytch_sample.routes import SampleEventRoute, SampleEventSubscription

    return [
        TransportSpec(
            name="sample",
            schemes=("sample",),
            producer_factory=_producer,
            consumer_factory=_consumer,
            description="one file per message in a spool directory; at-least-once",
            route_types=(SampleEventRoute,),
            subscription_types=(SampleEventSubscription,),
            # What its consumers offer at most (ordered_lanes with ?ordered=1); the same
            # as SpoolConsumer.capabilities, written out so discovery imports no transport.
            capabilities=Capabilities(ordered_lanes=True, requeue=True),
        )
    ]


@hookimpl
def dispytch_serializers() -> list[SerializerSpec]:
    return [
        SerializerSpec(
            name="json-gzip",
            content_type="application/json+gzip",
            factory=_serializer,
            description="gzip-compressed JSON",
        )
    ]


@hookimpl
def dispytch_middlewares() -> list[MiddlewareSpec]:
    return [
        MiddlewareSpec(
            name="sample-audit",
            factory=_audit,
            description="append outcome, route and handler of each handling to a file",
        )
    ]


@hookimpl
def dispytch_dispatcher_started(dispatcher: Any) -> None:
    log.debug("dispatcher %r started", getattr(dispatcher, "name", dispatcher))


@hookimpl
def dispytch_dispatcher_stopped(dispatcher: Any) -> None:
    log.debug("dispatcher %r stopped", getattr(dispatcher, "name", dispatcher))
