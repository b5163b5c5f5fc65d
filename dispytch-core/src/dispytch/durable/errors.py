"""Errors of durable functions (nothing above the ground floor imported)."""

from __future__ import annotations

from dispytch.errors import DispytchError

__all__ = [
    "AnyFailedError",
    "DurableError",
    "IdempotencyConflictError",
    "LeaseLostError",
    "NonDeterminismError",
    "RunCancelledError",
    "RunFailedError",
    "UnencodableError",
]


class DurableError(DispytchError):
    """Base class of the errors of :mod:`dispytch.durable`."""


class UnencodableError(DurableError, TypeError):
    """An argument or a result cannot be encoded by the function's type annotations.

    Raised at ``.dispatch()`` (or when a step's result is stored), never later at recovery:
    annotate the parameter with a type pydantic can serialise to JSON.
    """


class IdempotencyConflictError(DurableError):
    """A run with this id exists with different arguments.

    The id is an idempotency key: the same id with the same arguments returns the existing
    run; different arguments are a conflict, never a silent return of the old result.
    """


class NonDeterminismError(DurableError):
    """Replay found a different call at a journalled step (the code changed incompatibly).

    The run fails at once with this error, naming the step; it is never left pending.
    """


class LeaseLostError(DurableError):
    """This worker's lease on a run was taken over (its fencing token is stale).

    A worker presumed dead by the others may not write to the run's journal any more.
    """


class RunCancelledError(DurableError):
    """The run was cancelled (``Durable.cancel``, ``dispytch jobs cancel``, or it lost an
    ``any``/``race``): ``await call.result()`` raises it, and so does a ``gather`` that
    had it as a child."""


class RunFailedError(DurableError):
    """A durable run failed, and its error type is not registered for revival.

    Attributes:
        run_id: The run.
        type: The original exception's class name (``"KeyError"``).
        message: The original exception's message.
        traceback: The original traceback, as text.
        retryable: Whether the error counted as transient.
    """

    def __init__(
        self,
        run_id: str,
        type_name: str,
        message: str,
        traceback: str = "",
        *,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{type_name}: {message} (run {run_id})")
        self.run_id = run_id
        self.type = type_name
        self.message = message
        self.traceback = traceback
        self.retryable = retryable


class AnyFailedError(DurableError):
    """Every call of ``any()`` failed.

    Attributes:
        errors: Each call's error, in input order.
    """

    def __init__(self, message: str, errors: list[BaseException]) -> None:
        super().__init__(message)
        self.errors = errors
