"""The hooks a Dispytch plugin may implement.

Write a module (or class) with functions decorated by :data:`hookimpl` and register it
in the ``dispytch`` entry-point group of your distribution::

    [project.entry-points.dispytch]
    mytransport = "mypackage.dispytch_plugin"

There are two kinds of hooks:

- Registration hooks (``dispytch_transports``, ``dispytch_serializers``,
  ``dispytch_middlewares``, ``dispytch_journal_stores``) return typed records, once,
  the first time Dispytch needs them. Dispytch builds plain callables from the
  records; no hook is ever called per message.
- Lifecycle hooks (``dispytch_dispatcher_started`` and friends) tell observers that a
  dispatcher or emitter started or stopped, so an observability plugin can attach itself
  without the user wiring it. They are synchronous; a failing one is logged, never fatal.

A plugin's registration module must not import its broker library at module level:
discovering plugins must stay cheap, and a user who installed three transports but uses
one should not pay for the other two. Import the library inside the factories.

``docs/plugins.md`` documents each hook with its signature; a test keeps it in step with
this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from dispytch.plugins.records import (
        JournalStoreSpec,
        MiddlewareSpec,
        SerializerSpec,
        TransportSpec,
    )

PROJECT = "dispytch"

#: Marks hook specifications (used by Dispytch itself).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dispytch_transports() -> list[TransportSpec]:  # type: ignore[empty-body]
    """Return the transports this plugin provides.

    Added in 0.1.0. Called once, the first time Dispytch looks up a URL scheme (for
    ``EventEmitter.from_url`` / ``EventDispatcher.from_url``) or lists plugins. Two
    plugins claiming one scheme is an error that names both.

    Args:
        This hook takes no arguments.

    Returns:
        A list of :class:`~dispytch.plugins.TransportSpec`. Its factories take
        ``(url, **options)`` and import the broker library only when called.

    Example::

        from dispytch.plugins import TransportSpec, hookimpl


        def _producer(url: str, **options):
            from mypackage.transport import SampleProducer  # imports the broker lib

            return SampleProducer.from_url(url, **options)


        def _consumer(url: str, **options):
            from mypackage.transport import SampleConsumer

            return SampleConsumer.from_url(url, **options)


        @hookimpl
        def dispytch_transports():
            from mypackage.routes import SampleRoute, SampleSubscription  # cheap

            return [TransportSpec(
                name="sample",
                schemes=("sample",),
                producer_factory=_producer,
                consumer_factory=_consumer,
                description="files in a directory; at-least-once",
                route_types=(SampleRoute,),
                subscription_types=(SampleSubscription,),
            )]
    """


@hookspec
def dispytch_serializers() -> list[SerializerSpec]:  # type: ignore[empty-body]
    """Return the payload formats this plugin provides.

    Added in 0.1.0. Called once. The content type is what travels in the
    ``dispytch-content-type`` header and selects the decoder on the consuming side; the
    name is what users write (``serializer="cbor"``).

    Args:
        This hook takes no arguments.

    Returns:
        A list of :class:`~dispytch.plugins.SerializerSpec`. Each factory is called at
        most once, on first use, and must build an object with ``content_type``,
        ``encode(event) -> bytes`` and ``decoder(type) -> (bytes -> value)``.

    Example::

        from dispytch.plugins import SerializerSpec, hookimpl


        class CborSerializer:
            content_type = "application/cbor"

            def __init__(self):
                import cbor2  # the format's library, imported on first use

                self._cbor = cbor2

            def encode(self, event):
                return self._cbor.dumps(event.model_dump(mode="json"))

            def decoder(self, target):
                return lambda payload: target.model_validate(self._cbor.loads(payload))


        @hookimpl
        def dispytch_serializers():
            return [SerializerSpec(name="cbor", content_type="application/cbor",
                                   factory=CborSerializer)]
    """


@hookspec
def dispytch_middlewares() -> list[MiddlewareSpec]:  # type: ignore[empty-body]
    """Return named middleware factories this plugin provides.

    Added in 0.1.0. A stack uses one by name (``middlewares=["retry"]`` or
    ``middlewares=[("retry", {"attempts": 5})]``), so stacks can be composed from
    configuration. Nothing runs merely because a plugin is installed: a middleware runs
    only where a user names it.

    Args:
        This hook takes no arguments.

    Returns:
        A list of :class:`~dispytch.plugins.MiddlewareSpec`; each factory takes the
        options as keyword arguments and returns a middleware.

    Example::

        from dispytch.plugins import MiddlewareSpec, hookimpl


        class Audit:
            def __init__(self, path: str):
                self.path = path

            async def __call__(self, ctx, call_next):
                result = await call_next(ctx)
                with open(self.path, "a") as f:
                    f.write(f"{ctx.message.route}\\n")
                return result


        @hookimpl
        def dispytch_middlewares():
            return [MiddlewareSpec(name="audit", factory=Audit,
                                   description="append each handled route to a file")]
    """


@hookspec
def dispytch_journal_stores() -> list[JournalStoreSpec]:  # type: ignore[empty-body]
    """Return the durable-functions journal stores this plugin provides.

    Added in 0.1.0. ``Durable(..., store="postgresql://...")`` looks the URL's scheme up
    among these (SQLite, ``sqlite://``, is core's own and not a plugin). The factory is
    called with the URL when the ``Durable`` is built: it must not connect (``open()``
    does). A store must pass :class:`dispytch.testing.journal.JournalStoreConformance`.

    Args:
        This hook takes no arguments.

    Returns:
        A list of :class:`~dispytch.plugins.JournalStoreSpec`; each factory takes the URL
        and returns an object implementing :class:`dispytch.durable.JournalStore`.

    Example::

        from dispytch.plugins import JournalStoreSpec, hookimpl


        def make_store(url):
            from mypackage.store import PostgresJournalStore  # the driver, on first use

            return PostgresJournalStore(url)


        @hookimpl
        def dispytch_journal_stores():
            return [JournalStoreSpec(name="postgres", schemes=["postgresql"],
                                     factory=make_store)]
    """


@hookspec
def dispytch_dispatcher_started(dispatcher: Any) -> None:
    """Called after an :class:`~dispytch.EventDispatcher` started consuming.

    Added in 0.1.0. For observability plugins: attach metrics, log the subscriptions.
    Called synchronously from ``start()``; start your own task if you need to await.

    Args:
        dispatcher: The dispatcher that started.

    Returns:
        Nothing; a return value is ignored.

    Example::

        import logging

        from dispytch.plugins import hookimpl

        log = logging.getLogger("myplugin")


        @hookimpl
        def dispytch_dispatcher_started(dispatcher):
            log.info("dispatcher %r is consuming", dispatcher)
    """


@hookspec
def dispytch_dispatcher_stopped(dispatcher: Any) -> None:
    """Called after an :class:`~dispytch.EventDispatcher` stopped and closed its consumer.

    Added in 0.1.0. In-flight work is settled by then, so counters are final.

    Args:
        dispatcher: The dispatcher that stopped.

    Returns:
        Nothing; a return value is ignored.

    Example::

        from dispytch.plugins import hookimpl


        @hookimpl
        def dispytch_dispatcher_stopped(dispatcher):
            print("dispatcher stopped:", getattr(dispatcher, "stats", None))
    """


@hookspec
def dispytch_emitter_started(emitter: Any) -> None:
    """Called after an :class:`~dispytch.EventEmitter` started its producer.

    Added in 0.1.0.

    Args:
        emitter: The emitter that started.

    Returns:
        Nothing; a return value is ignored.

    Example::

        import logging

        from dispytch.plugins import hookimpl


        @hookimpl
        def dispytch_emitter_started(emitter):
            logging.getLogger("myplugin").info("emitter %r is up", emitter)
    """


@hookspec
def dispytch_emitter_stopped(emitter: Any) -> None:
    """Called after an :class:`~dispytch.EventEmitter` stopped its producer.

    Added in 0.1.0.

    Args:
        emitter: The emitter that stopped.

    Returns:
        Nothing; a return value is ignored.

    Example::

        import logging

        from dispytch.plugins import hookimpl


        @hookimpl
        def dispytch_emitter_stopped(emitter):
            logging.getLogger("myplugin").info("emitter %r is down", emitter)
    """
