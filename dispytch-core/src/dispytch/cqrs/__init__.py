"""Commands and queries: one handler per type, typed replies, events after success; in
process (:class:`Bus`) and over a transport (``EventEmitter.request``)."""

from __future__ import annotations

from dispytch.cqrs.bus import Bus
from dispytch.cqrs.errors import (
    NoHandlerError,
    NoRouteError,
    RemoteError,
    RequestExpiredError,
    RequestReplyUnsupportedError,
    RequestTimeoutError,
)
from dispytch.cqrs.messages import Command, CommandBase, EventCollector, Query, QueryBase
from dispytch.cqrs.wire import (
    HEADER_CORRELATION_ID,
    HEADER_DEADLINE,
    HEADER_REPLY_STATUS,
    HEADER_REPLY_TO,
    ReplySender,
    RequestSender,
)

__all__ = [
    "HEADER_CORRELATION_ID",
    "HEADER_DEADLINE",
    "HEADER_REPLY_STATUS",
    "HEADER_REPLY_TO",
    "Bus",
    "Command",
    "CommandBase",
    "EventCollector",
    "NoHandlerError",
    "NoRouteError",
    "Query",
    "QueryBase",
    "RemoteError",
    "ReplySender",
    "RequestExpiredError",
    "RequestReplyUnsupportedError",
    "RequestSender",
    "RequestTimeoutError",
]
