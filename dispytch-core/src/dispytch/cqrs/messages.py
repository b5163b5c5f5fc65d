"""Commands and queries: what you send, and what a handler may take besides the model.

:class:`CommandBase` and :class:`QueryBase` are pydantic models with the same ``__route__``
/ ``__topic__`` / ``__event_type__`` machinery as :class:`~dispytch.EventBase` (they
travel like events: the type in ``dispytch-event-type``), parametrised by their reply
type so that ``await bus.ask(GetUser(id=1))`` is typed::

    class GetUser(QueryBase[UserView]):
        __topic__ = "users.queries"
        id: int

A handler takes the model itself (``query: GetUser``) or, to see the envelope (id,
headers, deadline, metadata), :class:`Query` / :class:`Command` like ``Event[T]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

from dispytch.cqrs.wire import HEADER_CORRELATION_ID, HEADER_DEADLINE
from dispytch.event import Event, EventBase

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "Command",
    "CommandBase",
    "EventCollector",
    "Query",
    "QueryBase",
    "is_event",
    "message_kind",
    "reply_type_of",
]


class CommandBase(EventBase, Generic[R]):
    """Base class of commands: a request to change something, handled by exactly one
    handler, whose return value (of type ``R``) is the reply.

    Example::

        class CreateUser(CommandBase[UserCreated]):
            __topic__ = "users.commands"
            name: str
    """

    __dispytch_kind__: ClassVar[str] = "command"


class QueryBase(EventBase, Generic[R]):
    """Base class of queries: a question answered by exactly one handler, whose return
    value (of type ``R``) is the reply. Queries change nothing.
    """

    __dispytch_kind__: ClassVar[str] = "query"


def message_kind(cls: Any) -> str | None:
    """``"command"``, ``"query"`` or ``None`` (anything else) for a class."""
    if isinstance(cls, type) and issubclass(cls, (CommandBase, QueryBase)):
        return str(cls.__dispytch_kind__)
    return None


def is_event(obj: Any) -> bool:
    """Whether ``obj`` is an event (an ``EventBase`` that is not a command or query)."""
    return isinstance(obj, EventBase) and not isinstance(obj, (CommandBase, QueryBase))


def reply_type_of(cls: type[Any]) -> Any:
    """The ``R`` of ``CommandBase[R]`` / ``QueryBase[R]`` that ``cls`` derives from, or
    ``None`` when it names none."""
    for base in cls.__mro__:
        meta = getattr(base, "__pydantic_generic_metadata__", None)
        if meta and meta.get("origin") in (CommandBase, QueryBase) and meta.get("args"):
            return meta["args"][0]
    return None


class _Envelope(Event[T]):
    __slots__ = ()

    @property
    def correlation_id(self) -> str | None:
        """The requester's correlation id (``None`` when sent without waiting)."""
        return self.message.headers.get(HEADER_CORRELATION_ID)

    @property
    def deadline(self) -> float | None:
        """When the requester stops waiting (seconds since the epoch), if it said."""
        raw = self.message.headers.get(HEADER_DEADLINE)
        try:
            return float(raw) if raw else None
        except ValueError:
            return None


class Command(_Envelope[T]):
    """What a command handler receives when it asks for the envelope: the validated
    ``body`` and everything ``Event[T]`` carries, plus ``correlation_id`` and
    ``deadline``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Command(route={self.route!r}, body={self.body!r})"


class Query(_Envelope[T]):
    """What a query handler receives when it asks for the envelope (see :class:`Command`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Query(route={self.route!r}, body={self.body!r})"


_COLLECTOR_KEY = "dispytch.cqrs.events"


class EventCollector:
    """Events a command or query handler wants emitted once it has succeeded.

    Take it as a parameter (``events: EventCollector``) and :meth:`add` to it; the events
    go out after the handler returned, and are dropped when it raised (also when a
    ``Retry`` runs it again: each attempt starts with an empty collector).
    """

    __slots__ = ("_attempt", "events")

    def __init__(self) -> None:
        self.events: list[EventBase] = []
        self._attempt = 0

    def add(self, event: EventBase) -> None:
        """Emit ``event`` after the handler succeeded."""
        if not is_event(event):
            raise TypeError(
                f"EventCollector.add takes events (EventBase), not {type(event).__name__}."
            )
        self.events.append(event)

    def extend(self, events: Iterable[EventBase]) -> None:
        """Add several events."""
        for event in events:
            self.add(event)

    def __len__(self) -> int:
        return len(self.events)

    @classmethod
    def __dispytch_inject__(cls, ctx: Any) -> EventCollector:
        """The collector of this handling attempt (dependency injection calls it)."""
        found: EventCollector | None = ctx.state.get(_COLLECTOR_KEY)
        if found is None or found._attempt != ctx.attempt:
            found = cls()
            found._attempt = ctx.attempt
            ctx.state[_COLLECTOR_KEY] = found
        return found

    @staticmethod
    def of(ctx: Any) -> list[EventBase]:
        """The events collected in ``ctx``'s last attempt."""
        found: EventCollector | None = ctx.state.get(_COLLECTOR_KEY)
        if found is None or found._attempt != ctx.attempt:
            return []
        return found.events
