"""Dispytch: typed async event handlers over pluggable transports.

The transport plugins live in their own distributions (``dispytch-kafka`` ships
``dispytch.kafka`` and so on) and ship no ``dispytch/__init__.py`` of their own;
``extend_path`` lets their ``dispytch/<name>`` folders join this package both in wheel
installs and in editable source checkouts.
"""

from __future__ import annotations

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from dispytch._version import __version__
from dispytch.cqrs import (
    Bus,
    Command,
    CommandBase,
    EventCollector,
    Query,
    QueryBase,
    RemoteError,
)
from dispytch.di import Dependency
from dispytch.dispatcher import AckPolicy, EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.errors import (
    DispytchError,
    EmitError,
    EmitTimeoutError,
    HandlerRegistrationError,
    NotStartedError,
    PluginError,
    TransportNotFoundError,
)
from dispytch.event import Event, EventBase
from dispytch.middleware import (
    AsyncLock,
    CallNext,
    DeadLetter,
    Filter,
    HandlerContext,
    Middleware,
    Observe,
    Outcome,
    Retry,
    Timeout,
)
from dispytch.router import HandlerGroup, Router
from dispytch.routes import EventRoute, EventSubscription, TopicRoute, TopicSubscription
from dispytch.transport import Acknowledger, Consumer, Message, OutgoingMessage, Producer


def __getattr__(name: str) -> object:
    """``dispytch.function`` and ``dispytch.run``: the durable default, imported on use
    (so ``import dispytch`` does not pay for :mod:`dispytch.durable`)."""
    if name in ("function", "run"):
        import dispytch.durable as durable

        return getattr(durable, name)
    raise AttributeError(f"module 'dispytch' has no attribute {name!r}")


__all__ = [
    "RemoteError",
    "QueryBase",
    "Query",
    "EventCollector",
    "CommandBase",
    "Command",
    "Bus",
    "AckPolicy",
    "Acknowledger",
    "AsyncLock",
    "CallNext",
    "Consumer",
    "DeadLetter",
    "Dependency",
    "DispytchError",
    "EmitError",
    "EmitTimeoutError",
    "Event",
    "EventBase",
    "EventDispatcher",
    "EventEmitter",
    "EventRoute",
    "EventSubscription",
    "Filter",
    "HandlerContext",
    "HandlerGroup",
    "HandlerRegistrationError",
    "Message",
    "Middleware",
    "NotStartedError",
    "Observe",
    "Outcome",
    "OutgoingMessage",
    "PluginError",
    "Producer",
    "Retry",
    "Router",
    "Timeout",
    "TopicRoute",
    "TopicSubscription",
    "TransportNotFoundError",
    "__version__",
]
