"""Dispytch: typed async event handlers over pluggable transports.

The transport plugins live in their own distributions (``dispytch-kafka`` ships
``dispytch.kafka`` and so on) and ship no ``dispytch/__init__.py`` of their own;
``extend_path`` lets their ``dispytch/<name>`` folders join this package both in wheel
installs and in editable source checkouts.
"""

from __future__ import annotations

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from dispytch._version import __version__  # noqa: E402
from dispytch.di import Dependency  # noqa: E402
from dispytch.dispatcher import AckPolicy, EventDispatcher  # noqa: E402
from dispytch.emitter import EventEmitter  # noqa: E402
from dispytch.errors import (  # noqa: E402
    DispytchError,
    EmitError,
    EmitTimeoutError,
    HandlerRegistrationError,
    NotStartedError,
    PluginError,
    TransportNotFoundError,
)
from dispytch.event import Event, EventBase  # noqa: E402
from dispytch.middleware import (  # noqa: E402
    AsyncLock,
    DeadLetter,
    Filter,
    HandlerContext,
    Middleware,
    Observe,
    Outcome,
    Retry,
    Timeout,
)
from dispytch.router import HandlerGroup, Router  # noqa: E402
from dispytch.routes import EventRoute, EventSubscription, TopicRoute, TopicSubscription  # noqa: E402
from dispytch.transport import Acknowledger, Consumer, Message, OutgoingMessage, Producer  # noqa: E402

__all__ = [
    "AckPolicy",
    "Acknowledger",
    "AsyncLock",
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
