"""Errors of commands, queries and request/reply (the ground floor: nothing imported)."""

from __future__ import annotations

from dispytch.errors import DispytchError


class RemoteError(DispytchError):
    """A request's handler raised; this is its error, carried back to the caller.

    Raised by ``EventEmitter.request`` as soon as the error reply arrives (never as a
    timeout). An exception type the caller registers (``request(..., errors=[...])`` or
    ``emitter.register_error``) is raised as itself instead.

    Attributes:
        type: The class name of the handler's exception (``"ValueError"``).
        message: Its text.
        retryable: Whether the responder judged that sending the request again may work
            (the exception's ``retryable`` attribute, else true for timeouts and
            connection errors).
    """

    def __init__(self, type: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.retryable = retryable


class RequestExpiredError(DispytchError, TimeoutError):
    """The responder received the request after its deadline and did not run it.

    Send a new request with a longer ``timeout`` or make the responder keep up.
    """


class RequestTimeoutError(DispytchError, TimeoutError):
    """No reply arrived within the request's timeout.

    The handler may still be running (cancelling a request is local to the caller); it
    will not start once the deadline the request carries has passed.
    """


class NoRouteError(DispytchError):
    """Nothing can receive this request (no queue bound, no subscriber): it failed at once
    instead of waiting for its timeout.

    Start a dispatcher with a handler for it, or check the message class's route.
    """


class NoHandlerError(NoRouteError, LookupError):
    """No handler takes this command or query type: a ``Bus`` holds none, or, over a
    broker, the dispatcher that received the request holds none for its type (it replied
    at once instead of letting the caller wait for its timeout).

    Register one with ``@router.command(X)`` / ``@router.query(X)`` and add the router to
    the bus or dispatcher before ``start()`` (over a broker: in the service that consumes
    the request's topic).
    """


class RequestReplyUnsupportedError(DispytchError):
    """The emitter's transport cannot carry a reply back (no ``request_reply`` capability).

    Use a transport whose producer implements ``dispytch.cqrs.RequestSender`` (memory,
    RabbitMQ), or publish the command as a fire-and-forget event with ``emit``.
    """
