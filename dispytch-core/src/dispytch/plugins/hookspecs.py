"""The hooks a Dispytch plugin may implement.

Write a module (or class) with functions decorated by :data:`hookimpl` and register it
in the ``dispytch`` entry-point group of your distribution::

    [project.entry-points.dispytch]
    mytransport = "mypackage.dispytch_plugin"

Registration hooks return records once; Dispytch builds plain async callables from them.
No hook is called per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from dispytch.plugins.records import MiddlewareSpec, SerializerSpec, TransportSpec

PROJECT = "dispytch"

#: Marks hook specifications (used by Dispytch itself).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dispytch_transports() -> list[TransportSpec]:  # type: ignore[empty-body]
    """Return the transports this plugin provides.

    Added in 0.1.0. Called once, when Dispytch first needs a transport. Keep the broker
    library out of module-level imports: the factories import it when called.

    Returns:
        A list of :class:`~dispytch.plugins.TransportSpec`.

    Example::

        @hookimpl
        def dispytch_transports():
            return [TransportSpec(
                name="sample", schemes=("sample",),
                producer_factory=lambda url, **kw: SampleProducer(url, **kw),
                consumer_factory=lambda url, **kw: SampleConsumer(url, **kw),
                description="files in a directory; at-least-once",
            )]
    """


@hookspec
def dispytch_serializers() -> list[SerializerSpec]:  # type: ignore[empty-body]
    """Return the payload formats this plugin provides.

    Added in 0.1.0. Called once. The content type is what travels in the
    ``dispytch-content-type`` header and selects the decoder on the consuming side.

    Returns:
        A list of :class:`~dispytch.plugins.SerializerSpec`.

    Example::

        @hookimpl
        def dispytch_serializers():
            return [SerializerSpec(name="cbor", content_type="application/cbor",
                                   factory=CborSerializer)]
    """


@hookspec
def dispytch_middlewares() -> list[MiddlewareSpec]:  # type: ignore[empty-body]
    """Return named middleware factories this plugin provides.

    Added in 0.1.0. A stack uses one by name (``middlewares=["retry"]`` or
    ``("retry", {"attempts": 5})``); nothing runs merely because a plugin is installed.

    Returns:
        A list of :class:`~dispytch.plugins.MiddlewareSpec`.

    Example::

        @hookimpl
        def dispytch_middlewares():
            return [MiddlewareSpec(name="audit", factory=AuditMiddleware)]
    """


@hookspec
def dispytch_dispatcher_started(dispatcher: Any) -> None:
    """Called after an :class:`~dispytch.EventDispatcher` started consuming.

    Added in 0.1.0. For observability plugins: attach metrics, log the subscriptions.

    Args:
        dispatcher: The dispatcher that started.

    Example::

        @hookimpl
        def dispytch_dispatcher_started(dispatcher):
            log.info("consuming %s", dispatcher.subscriptions)
    """


@hookspec
def dispytch_dispatcher_stopped(dispatcher: Any) -> None:
    """Called after an :class:`~dispytch.EventDispatcher` stopped and closed its consumer.

    Added in 0.1.0.

    Args:
        dispatcher: The dispatcher that stopped; its ``stats`` are final.

    Example::

        @hookimpl
        def dispytch_dispatcher_stopped(dispatcher):
            print(dispatcher.stats)
    """


@hookspec
def dispytch_emitter_started(emitter: Any) -> None:
    """Called after an :class:`~dispytch.EventEmitter` started its producer.

    Added in 0.1.0.

    Args:
        emitter: The emitter that started.

    Example::

        @hookimpl
        def dispytch_emitter_started(emitter):
            log.info("emitter up")
    """


@hookspec
def dispytch_emitter_stopped(emitter: Any) -> None:
    """Called after an :class:`~dispytch.EventEmitter` stopped its producer.

    Added in 0.1.0.

    Args:
        emitter: The emitter that stopped.

    Example::

        @hookimpl
        def dispytch_emitter_stopped(emitter):
            log.info("emitter down")
    """
