"""Fault injection for the testing kit: failing dependencies, crashes, duplicates.

Each fault is what a real deployment meets, played on the real memory transport rather
than imitated: a dependency that raises for its first calls, a consumer that dies after
handling a message but before its acknowledgement reached the broker (the broker
delivers it again, attempt raised), and a producer that sends one event twice (the
consumer receives two copies with the same event id).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from dispytch.message import HEADER_EVENT_TYPE
from dispytch.patterns import RoutePattern

__all__ = ["FailingCall", "Faults", "MessageFault", "Selector"]

#: What a message fault applies to: an event class (by its event type), a topic (``{name}``
#: and wildcard patterns allowed), or ``None`` for every message.
Selector = type | str | None


class MessageFault:
    """A fault applied to the next ``times`` messages that ``selector`` picks.

    Attributes:
        times: How many messages it applies to in all.
        applied: How many it has applied to so far.
    """

    def __init__(self, kind: str, selector: Selector, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1.")
        self.kind = kind
        self.selector = selector
        self.times = times
        self.applied = 0
        self._event_type: str | None = None
        self._pattern: RoutePattern | None = None
        if isinstance(selector, type):
            event_type = getattr(selector, "event_type", None)
            self._event_type = event_type() if callable(event_type) else selector.__name__
        elif isinstance(selector, str):
            self._pattern = RoutePattern(selector)
        elif selector is not None:
            raise TypeError(
                f"A fault applies to an event class, a topic or None, not {selector!r}."
            )

    @property
    def exhausted(self) -> bool:
        """Whether it has applied to all ``times`` messages."""
        return self.applied >= self.times

    def take(self, route: str, headers: Mapping[str, str]) -> bool:
        """Apply to this message if it is picked and the fault is not exhausted."""
        if self.exhausted:
            return False
        if self._event_type is not None and headers.get(HEADER_EVENT_TYPE) != self._event_type:
            return False
        if self._pattern is not None and self._pattern.match(route) is None:
            return False
        self.applied += 1
        return True

    def __repr__(self) -> str:
        what = getattr(self.selector, "__name__", self.selector) or "any message"
        return f"<{self.kind} {what}: {self.applied}/{self.times}>"


class FailingCall:
    """A callable attribute replaced so that its first ``times`` calls raise ``error``.

    Attributes:
        calls: Calls made so far.
        raised: Calls that raised the injected error.
    """

    def __init__(
        self, target: Any, attribute: str, times: int, error: BaseException | type[BaseException]
    ) -> None:
        if times < 1:
            raise ValueError("times must be at least 1.")
        original = getattr(target, attribute, None)
        if not callable(original):
            raise TypeError(
                f"{target!r}.{attribute} is not a callable attribute; fail() replaces a "
                "method or function the handler's dependency calls."
            )
        self.target = target
        self.attribute = attribute
        self.times = times
        self.error = error
        self.calls = 0
        self.raised = 0
        self._had_own = attribute in getattr(target, "__dict__", {})
        self._original = getattr(target, "__dict__", {}).get(attribute, original)
        self._restored = False

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                self._maybe_raise()
                return await original(*args, **kwargs)

            setattr(target, attribute, async_wrapper)
        else:

            @functools.wraps(original)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                self._maybe_raise()
                return original(*args, **kwargs)

            setattr(target, attribute, sync_wrapper)

    def _maybe_raise(self) -> None:
        self.calls += 1
        if self.raised < self.times:
            self.raised += 1
            error = self.error
            raise error() if isinstance(error, type) else error

    def restore(self) -> None:
        """Put the original attribute back."""
        if self._restored:
            return
        self._restored = True
        if self._had_own:
            setattr(self.target, self.attribute, self._original)
        else:
            delattr(self.target, self.attribute)


class Faults:
    """The faults of one kit (``kit.faults``); all are undone when the kit exits."""

    def __init__(self) -> None:
        self.crashes: list[MessageFault] = []
        self.duplicates: list[MessageFault] = []
        self.calls: list[FailingCall] = []

    def fail(
        self,
        target: Any,
        attribute: str,
        *,
        times: int = 1,
        error: BaseException | type[BaseException] | None = None,
    ) -> FailingCall:
        """Make ``target.attribute`` raise for its next ``times`` calls, then work again.

        Patch what a handler's dependency *calls* (``kit.faults.fail(mailer, "send")``):
        the dependency function itself was captured when the handler was registered.

        Args:
            target: An object, class or module.
            attribute: The name of a function or (async) method on it.
            times: Calls that fail before the real one runs.
            error: The exception (instance or class) to raise; default a
                ``ConnectionError`` naming the fault.
        """
        if error is None:
            error = ConnectionError(f"injected fault: {attribute} failed")
        call = FailingCall(target, attribute, times, error)
        self.calls.append(call)
        return call

    def crash_before_ack(self, selector: Selector = None, *, times: int = 1) -> MessageFault:
        """The consumer "dies" after handling a picked message, before its ack reaches
        the broker: the broker delivers the message again (``attempt`` raised), as a real
        broker does when a consumer's connection drops.
        """
        fault = MessageFault("crash_before_ack", selector, times)
        self.crashes.append(fault)
        return fault

    def duplicate(self, selector: Selector = None, *, times: int = 1) -> MessageFault:
        """A picked event is sent twice (a producer retry after a lost confirmation): the
        consumers get two copies with the same ``dispytch-event-id``."""
        fault = MessageFault("duplicate", selector, times)
        self.duplicates.append(fault)
        return fault

    def take_crash(self, route: str, headers: Mapping[str, str]) -> bool:
        """Whether the ack of this message is lost to a crash (one fault applies)."""
        return any(f.take(route, headers) for f in self.crashes)

    def take_duplicate(self, route: str, headers: Mapping[str, str]) -> bool:
        """Whether this sent message goes out twice (one fault applies)."""
        return any(f.take(route, headers) for f in self.duplicates)

    def restore(self) -> None:
        """Undo every patched call; message faults stop applying."""
        for call in reversed(self.calls):
            call.restore()
        for fault in (*self.crashes, *self.duplicates):
            fault.applied = fault.times
