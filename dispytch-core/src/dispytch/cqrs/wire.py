"""Request/reply on the wire: the headers, and the small contract a transport implements.

A request is an ordinary :class:`~dispytch.OutgoingMessage` (the command or query
serialised like an event, its type in ``dispytch-event-type``) with two more headers:

- ``dispytch-correlation-id``: matches the reply to the caller's pending request;
- ``dispytch-deadline``: absolute, seconds since the epoch (``time.time()``). A responder
  that receives the request later does not run it, counts it and replies ``expired``.

A reply carries ``dispytch-correlation-id``, ``dispytch-reply-status`` (``ok``, ``error``,
``expired``, ``no-handler``) and, for ``ok``, the reply serialised with the responder's
serializer (its ``dispytch-content-type``); for ``error`` and ``no-handler`` (the
responder's dispatcher holds no handler for the request's type),
``dispytch-error-type``, ``dispytch-error-message`` and ``dispytch-error-retryable`` with
an empty payload (a requester that does not know ``no-handler`` raises it as a
``RemoteError`` of type ``NoHandlerError``).

Transports opt in with two protocols: the producer is a :class:`RequestSender` (one reply
address per process, opened once; requests that nothing can receive fail fast with
:class:`~dispytch.cqrs.errors.NoRouteError`), the consumer a :class:`ReplySender`. Both
declare ``Capabilities(request_reply=True)`` on the consumer and in their ``TransportSpec``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from dispytch.message import Message
from dispytch.transport import OutgoingMessage

HEADER_CORRELATION_ID = "dispytch-correlation-id"
HEADER_DEADLINE = "dispytch-deadline"
HEADER_REPLY_STATUS = "dispytch-reply-status"
HEADER_ERROR_RETRYABLE = "dispytch-error-retryable"
#: Where the memory transport (and any transport without a native reply-to property)
#: writes the requester's reply address.
HEADER_REPLY_TO = "dispytch-reply-to"

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_EXPIRED = "expired"
STATUS_NO_HANDLER = "no-handler"

#: Called by a transport for each reply that reaches this process's reply address.
ReplyHandler = Callable[[Message], None]


@runtime_checkable
class RequestSender(Protocol):
    """A producer that can send requests and receive their replies.

    The requester (``EventEmitter.request``) calls :meth:`open_replies` once per producer,
    before its first request, then :meth:`send_request` per request. Replies are handed to
    the callback in any order, from any number of outstanding requests; the requester
    matches them by ``dispytch-correlation-id``.
    """

    async def open_replies(self, deliver: ReplyHandler) -> None:
        """Start receiving replies at this process's one reply address (idempotent).

        RabbitMQ: consume ``amq.rabbitmq.reply-to`` on the producer's channel; memory: a
        reply inbox registered with the broker.
        """

    async def send_request(self, message: OutgoingMessage) -> None:
        """Publish one request with this process's reply address.

        Raises:
            NoRouteError: Nothing can receive it (RabbitMQ: a ``mandatory`` return;
                memory: no group subscribes to the topic). Raised at once.
            NotStartedError: The producer is not started.
        """


@runtime_checkable
class ReplySender(Protocol):
    """A consumer that can answer the requests it delivers."""

    def reply_address(self, request: Message) -> str | None:
        """Where the reply to ``request`` goes, or ``None`` when the sender wants none (a
        command sent with ``emit``: fire and forget)."""

    async def send_reply(
        self, request: Message, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """Send a reply to ``request``'s reply address (best effort: a requester that is
        gone loses it; it never raises for that)."""
