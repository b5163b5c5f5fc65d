"""Errors raised by Dispytch. Each says what went wrong and what to do about it."""

from __future__ import annotations


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
    """The broker did not confirm an event within the producer's delivery timeout."""


class HandlerRegistrationError(DispytchError):
    """A handler or one of its dependencies cannot be wired (reported at registration)."""


class RouteParamError(DispytchError):
    """A named route segment could not be converted to its annotated type."""


class PayloadError(DispytchError):
    """A payload could not be decoded or validated into the handler's event type."""


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
