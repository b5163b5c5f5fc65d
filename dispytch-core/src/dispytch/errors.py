"""Errors raised by Dispytch. Each says what went wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DispytchError(Exception):
    """Base class of every error Dispytch raises on purpose."""


class NotStartedError(DispytchError):
    """A producer or consumer was used before ``start()`` or after ``stop()``.

    Dispytch raises instead of dropping the event: an emit through a client that is not
    running must never look like a success.
    """


class ConsumerClosedError(DispytchError):
    """A consumer cannot go on (its channel was closed, the broker cancelled it, its
    client was closed under it).

    Raised from ``Consumer.listen()``. The dispatcher does not retry it: it stops,
    :attr:`EventDispatcher.running <dispytch.EventDispatcher.running>` turns false and
    :meth:`EventDispatcher.wait <dispytch.EventDispatcher.wait>` raises this error, so
    ``dispytch run`` exits non-zero instead of waiting on a consumer that receives nothing.
    A recoverable failure (a dropped connection the client will re-establish) is any other
    exception: the dispatcher logs it and calls ``listen()`` again after a backoff.
    """


class EmitError(DispytchError):
    """The transport did not accept an event."""


class EmitRejectedError(EmitError):
    """The broker (or the serializer) refused this message for a reason that sending it
    again will not fix: too large, refused by the broker's policy, not serialisable.

    Transports raise it (or a subclass) for permanent failures; any other
    :class:`EmitError` is taken as transient (an outage, a timeout) and may be retried.
    The dead-letter policy relies on the difference: it retries a transient failure with
    backoff and gives up at once on a permanent one.
    """


class EmitTimeoutError(EmitError):
    """The broker did not confirm an event within the producer's delivery timeout.

    A producer's ``send_batch`` that knows which messages of the batch were confirmed
    passes the others as ``undelivered`` (the :class:`~dispytch.OutgoingMessage` objects
    it was given); ``EventEmitter.emit_batch`` then calls its ``on_timeout`` callbacks for
    those events only. ``None`` means "not known": every event of the batch is then
    treated as not delivered, each passed to the callbacks once.

    Attributes:
        undelivered: The messages not confirmed, or ``None`` when the producer cannot say.
    """

    def __init__(self, *args: object, undelivered: Sequence[Any] | None = None) -> None:
        super().__init__(*args)
        self.undelivered: tuple[Any, ...] | None = (
            tuple(undelivered) if undelivered is not None else None
        )


class HandlerRegistrationError(DispytchError):
    """A handler or one of its dependencies cannot be wired (reported at registration)."""


class RouteParamError(DispytchError):
    """A named route segment could not be converted to its annotated type."""


class UnknownRouteError(DispytchError):
    """No handler takes the route a message arrived on.

    The dispatcher does not raise it: it is the :attr:`Message.error
    <dispytch.Message.error>` of a message rejected for that reason, so a transport that
    dead-letters rejected messages can say why.
    """


class PayloadError(DispytchError):
    """A payload could not be decoded or validated into the handler's event type.

    Delivering the same bytes again cannot help, so the failure policy never retries it:
    the message goes to its dead letter or is rejected at once.
    """


class UnknownContentTypeError(PayloadError):
    """A message names a content type no installed serializer decodes.

    The message says which content types are served. Like any :class:`PayloadError` it is
    never retried: install the serializer plugin for it, or fix the producer.

    Attributes:
        content_type: The content type the message named (without parameters).
        served: The content types the installed serializers decode.
    """

    def __init__(self, message: str, *, content_type: str, served: tuple[str, ...]) -> None:
        super().__init__(message)
        self.content_type = content_type
        self.served = served


class ConfigError(DispytchError, ValueError):
    """A transport option (in a URL query or a keyword argument) is unknown or invalid.

    The message names the option, what was wrong and, for an unknown name, the closest
    known one.
    """


class PluginError(DispytchError):
    """A plugin could not be loaded, or two plugins claim the same name or scheme."""


class TransportNotFoundError(PluginError):
    """No installed plugin serves a URL scheme."""


class RequeueMessage(DispytchError):
    """Raised by middleware to hand the message back to the broker for redelivery.

    The message is neither acknowledged nor rejected: the transport redelivers it (the
    in-memory and RabbitMQ transports at once, Kafka from the last committed offset, Redis
    Streams once the entry is reclaimed).
    """


class DeadLetterError(RequeueMessage):
    """Publishing a failed message to its dead-letter route failed.

    The original message is therefore not acknowledged: it stays with the broker and is
    delivered again, so nothing is lost.
    """


class DeadLetterFailedError(DispytchError):
    """A failed message could not be dead-lettered, and trying again cannot help.

    Raised by :class:`~dispytch.middleware.DeadLetter` when the dead-letter publish failed
    for a permanent reason (or the target stayed down through the last delivery it
    allows) and the truncated dead letter failed too. It is not a
    :class:`RequeueMessage`: the dispatcher treats it as a failure for good, logs it at
    ERROR (the message says the route, the size, the handler's error, the dead-letter
    error and where the payload went) and rejects the message through the transport
    (``nack(requeue=False)``), so it cannot block its lane by coming back for ever.
    """
