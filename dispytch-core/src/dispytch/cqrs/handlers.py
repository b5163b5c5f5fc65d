"""Command and query handlers: adapting class handlers, the reply plan, events from
handlers, and the two ends of request/reply over a transport (:class:`Responder` for a
dispatcher, :class:`Requester` for an emitter).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_type_hints

from pydantic import BaseModel, RootModel, TypeAdapter

from dispytch.context import CallNext, HandlerContext
from dispytch.cqrs.errors import (
    NoHandlerError,
    RemoteError,
    RequestExpiredError,
    RequestTimeoutError,
)
from dispytch.cqrs.messages import EventCollector, is_event, reply_type_of
from dispytch.cqrs.wire import (
    HEADER_CORRELATION_ID,
    HEADER_DEADLINE,
    HEADER_ERROR_RETRYABLE,
    HEADER_REPLY_STATUS,
    STATUS_ERROR,
    STATUS_EXPIRED,
    STATUS_NO_HANDLER,
    STATUS_OK,
    ReplySender,
    RequestSender,
)
from dispytch.di import Dependency
from dispytch.errors import EmitRejectedError, HandlerRegistrationError, NotStartedError
from dispytch.event import EventBase
from dispytch.message import HEADER_CONTENT_TYPE, HEADER_ERROR_MESSAGE, HEADER_ERROR_TYPE, Message
from dispytch.serialization import Serializer
from dispytch.transport import OutgoingMessage

log = logging.getLogger("dispytch.cqrs")

#: Longest error text sent back in a reply header.
MAX_ERROR_TEXT = 1000

_NO_REPLY_TYPE: Any = object()


@dataclass(frozen=True)
class RequestInfo:
    """What a command or query registration adds to a handler.

    Attributes:
        kind: ``"command"`` or ``"query"``.
        message_type: The registered class.
        reply: The reply type (the handler's return annotation, else the class's
            ``CommandBase[R]`` parameter), or ``Any`` when neither says.
        adapter: Validates replies into ``reply`` (``None``: not validated).
        local: No transport route can be derived: served by a ``Bus`` only.
    """

    kind: str
    message_type: type[Any]
    reply: Any
    adapter: TypeAdapter[Any] | None
    local: bool = False

    @classmethod
    def build(
        cls, kind: str, message_type: type[Any], returns: Any, *, local: bool = False
    ) -> RequestInfo:
        reply = returns if returns is not _NO_REPLY_TYPE else reply_type_of(message_type)
        if reply is None and returns is _NO_REPLY_TYPE:
            return cls(kind, message_type, Any, None, local)
        if reply is None:
            reply = type(None)
        return cls(kind, message_type, reply, TypeAdapter(reply), local)

    def validate(self, result: Any) -> Any:
        """``result`` validated against the reply type.

        Raises:
            pydantic.ValidationError: It does not match the handler's return annotation.
        """
        adapter = self.adapter
        return result if adapter is None else adapter.validate_python(result)


def adapt_handler(target: Any, handler_name: str) -> tuple[Callable[..., Any], Any]:
    """A function the dependency plan can compile for ``target``, and its return type.

    A class becomes a function whose first parameter is a new instance (its constructor's
    parameters are dependencies, made per handling) and whose other parameters are those
    of its ``handle`` (or ``__call__``) method.

    Raises:
        HandlerRegistrationError: A class with neither method, or annotations that do not
            resolve.
    """
    if inspect.isclass(target):
        return _class_handler(target, handler_name)
    try:
        hints = get_type_hints(_hint_target(target), include_extras=True)
    except Exception as exc:
        raise HandlerRegistrationError(
            f"Handler {handler_name!r}: cannot resolve its annotations ({exc}). "
            "Import the types it names at module level."
        ) from exc
    return target, hints.get("return", _NO_REPLY_TYPE)


def _hint_target(target: Any) -> Any:
    if inspect.isfunction(target) or inspect.ismethod(target):
        return target
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects
    return call if call is not None else target


def _class_handler(cls: type[Any], handler_name: str) -> tuple[Callable[..., Any], Any]:
    name = next(
        (n for n in ("handle", "__call__") if n in _own_attrs(cls) and callable(getattr(cls, n))),
        None,
    )
    if name is None:
        raise HandlerRegistrationError(
            f"Handler {handler_name!r}: the class {cls.__qualname__} has no handle() or "
            "__call__() method. Define `async def handle(self, message)`."
        )
    method = getattr(cls, name)
    try:
        hints = get_type_hints(method, include_extras=True)
        init = cls.__init__
        init_hints = {} if init is object.__init__ else get_type_hints(init, include_extras=True)
    except Exception as exc:
        raise HandlerRegistrationError(
            f"Handler {handler_name!r}: cannot resolve the annotations of {cls.__qualname__} "
            f"({exc}). Import the types it names at module level."
        ) from exc
    init_sig = inspect.signature(cls)

    async def make(**kwargs: Any) -> Any:
        return cls(**kwargs)

    make.__signature__ = init_sig  # type: ignore[attr-defined]
    make.__annotations__ = {
        p: init_hints.get(p, param.annotation) for p, param in init_sig.parameters.items()
    }
    make.__qualname__ = f"{cls.__qualname__}.__init__"

    sig = inspect.signature(method)
    params = list(sig.parameters.values())[1:]  # without self
    instance = inspect.Parameter(
        "_dispytch_instance",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[cls, Dependency(make, use_cache=False)],
    )
    call: Callable[..., Any]
    if inspect.iscoroutinefunction(method):

        async def acall(_dispytch_instance: Any, **kwargs: Any) -> Any:
            return await getattr(_dispytch_instance, name)(**kwargs)

        call = acall
    else:

        def scall(_dispytch_instance: Any, **kwargs: Any) -> Any:
            return getattr(_dispytch_instance, name)(**kwargs)

        call = scall
    setattr(call, "__signature__", sig.replace(parameters=[instance, *params]))  # noqa: B010
    call.__annotations__ = {
        "_dispytch_instance": instance.annotation,
        **{p.name: hints.get(p.name, p.annotation) for p in params},
    }
    call.__qualname__ = f"{cls.__qualname__}.{name}"
    return call, hints.get("return", _NO_REPLY_TYPE)


def _own_attrs(cls: type[Any]) -> set[str]:
    out: set[str] = set()
    for base in cls.__mro__:
        if base is object:
            continue
        out.update(vars(base))
    return out


def collect_events(result: Any, ctx: HandlerContext | None) -> list[EventBase]:
    """The events a handler returned (one, or a list of only events) and collected."""
    if is_event(result):
        events: list[EventBase] = [result]
    elif isinstance(result, (list, tuple)) and result and all(is_event(e) for e in result):
        events = list(result)
    else:
        events = []
    if ctx is not None:
        events.extend(EventCollector.of(ctx))
    return events


def error_headers(exc: BaseException) -> dict[str, str]:
    """The reply headers that carry ``exc`` back to the caller."""
    text = str(exc)
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 3] + "..."
    retryable = getattr(exc, "retryable", None)
    if not isinstance(retryable, bool):
        retryable = isinstance(exc, (TimeoutError, ConnectionError))
    return {
        HEADER_REPLY_STATUS: STATUS_ERROR,
        HEADER_ERROR_TYPE: type(exc).__name__,
        HEADER_ERROR_MESSAGE: text,
        HEADER_ERROR_RETRYABLE: "true" if retryable else "false",
    }


def encode_reply(serializer: Serializer, info: RequestInfo, result: Any) -> bytes:
    """``result`` serialised with ``serializer`` (a model directly, any other value as a
    pydantic root model, which is the same bytes as the value itself)."""
    if isinstance(result, BaseModel):
        return serializer.encode(result)
    root = _root_model(info.reply)
    return serializer.encode(root(result))


_ROOTS: dict[Any, type[RootModel[Any]]] = {}


def _root_model(tp: Any) -> type[RootModel[Any]]:
    model = _ROOTS.get(tp)
    if model is None:
        model = _ROOTS[tp] = RootModel[tp]
    return model


def reply_model(tp: Any) -> tuple[Any, bool]:
    """What to decode a reply of type ``tp`` into, and whether to unwrap ``.root``."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, False
    return _root_model(tp), True


EmitEvents = Callable[[Sequence[EventBase]], Awaitable[None]]


class Responder:
    """Answers requests for a dispatcher: wraps each command and query handler's chain.

    A message without a correlation id (a command sent with ``emit``) goes through the
    chain as any event does: failures follow the dispatcher's failure policy. A request
    is answered exactly once: ``expired`` (not run) when its deadline passed, ``error`` at
    once when the handler raised, else ``ok`` with the reply. The request itself is then
    acknowledged: requests are never redelivered (the caller decides whether to retry).

    Args:
        consumer: The dispatcher's consumer (a :class:`ReplySender` where it can reply).
        serializer: Serialises replies.
        emit: Publishes the events handlers returned or collected (``None``: handlers
            that produce events are an error, reported to the caller).
        stats: The dispatcher's counters: ``requests_answered``, ``requests_failed``,
            ``requests_expired``.
    """

    def __init__(
        self,
        consumer: object,
        serializer: Serializer,
        emit: EmitEvents | None,
        stats: Counter[str],
    ) -> None:
        self.replier: ReplySender | None = consumer if isinstance(consumer, ReplySender) else None
        self.serializer = serializer
        self.emit = emit
        self.stats = stats

    async def _emit(self, events: Sequence[EventBase], handler: str) -> None:
        if not events:
            return
        if self.emit is None:
            raise EmitRejectedError(
                f"Handler {handler!r} produced {len(events)} event(s) but the dispatcher has "
                "no emitter for them.\nGive the dispatcher one: EventDispatcher(..., "
                "emitter=EventEmitter(producer))."
            )
        await self.emit(events)

    def around(self, info: RequestInfo, handler: str, chain: CallNext) -> CallNext:
        """``chain`` (every middleware level and the handler) wrapped to answer requests."""
        stats = self.stats
        serializer = self.serializer
        content_type = serializer.content_type

        async def respond(ctx: HandlerContext) -> Any:
            msg = ctx.message
            headers = msg.headers
            correlation = headers.get(HEADER_CORRELATION_ID)
            replier = self.replier
            address = (
                replier.reply_address(msg)
                if replier is not None and correlation is not None
                else None
            )
            if replier is None or address is None or correlation is None:
                result = await chain(ctx)
                await self._emit(collect_events(result, ctx), handler)
                return result
            deadline = headers.get(HEADER_DEADLINE)
            if deadline is not None and _expired(deadline):
                stats["requests_expired"] += 1
                log.info(
                    "Request %s for %r on %r arrived after its deadline; not run, replied "
                    "'expired'.",
                    correlation,
                    handler,
                    msg.route,
                )
                await replier.send_reply(
                    msg,
                    b"",
                    {HEADER_CORRELATION_ID: correlation, HEADER_REPLY_STATUS: STATUS_EXPIRED},
                )
                return None
            try:
                result = info.validate(await chain(ctx))
                payload = encode_reply(serializer, info, result)
                await self._emit(collect_events(result, ctx), handler)
            except Exception as exc:
                stats["requests_failed"] += 1
                log.warning(
                    "Request %s: handler %r raised %s: %s; the error was sent to the caller.",
                    correlation,
                    handler,
                    type(exc).__name__,
                    exc,
                )
                reply = error_headers(exc)
                reply[HEADER_CORRELATION_ID] = correlation
                await replier.send_reply(msg, b"", reply)
                return None
            await replier.send_reply(
                msg,
                payload,
                {
                    HEADER_CORRELATION_ID: correlation,
                    HEADER_REPLY_STATUS: STATUS_OK,
                    HEADER_CONTENT_TYPE: content_type,
                },
            )
            stats["requests_answered"] += 1
            return result

        return respond


def _expired(deadline: str) -> bool:
    try:
        return float(deadline) < time.time()
    except ValueError:
        return False


Build = Callable[..., OutgoingMessage]
Decode = Callable[[Message, Any], Any]


class Requester:
    """The caller's end of request/reply, one per emitter: one reply address for the
    process (opened on the first request), outstanding requests by correlation id.

    Args:
        producer: The emitter's producer (a :class:`RequestSender`).
        build: Serialises a command or query into a request (``EventEmitter.build``).
        decode: Validates a reply's payload into a type (by its content type).
    """

    def __init__(self, producer: RequestSender, build: Build, decode: Decode) -> None:
        self.producer = producer
        self._build = build
        self._decode = decode
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._opened = False
        self._opening: asyncio.Lock | None = None
        self._prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        #: Exception types raised as themselves when a handler raises them (by name).
        self.errors: dict[str, type[BaseException]] = {}

    @property
    def pending(self) -> int:
        """Requests waiting for their reply."""
        return len(self._pending)

    def close(self) -> None:
        """The emitter stopped: fail the requests still waiting (their replies would reach
        a closed reply address) and open the reply address again on the next request."""
        self._opened = False
        pending, self._pending = self._pending, {}
        for correlation, fut in pending.items():
            if not fut.done():
                fut.set_exception(
                    NotStartedError(
                        f"The emitter was stopped while request {correlation} waited for its "
                        "reply.\nStop the emitter only after its requests returned."
                    )
                )

    def _deliver(self, reply: Message) -> None:
        correlation = reply.headers.get(HEADER_CORRELATION_ID)
        fut = self._pending.get(correlation) if correlation is not None else None
        if fut is None or fut.done():
            log.debug("Reply %s matches no pending request (it timed out?); dropped.", correlation)
            return
        fut.set_result(reply)

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self._opened:
                await self.producer.open_replies(self._deliver)
                self._opened = True

    async def request(
        self,
        message: EventBase,
        *,
        timeout: float,
        reply: Any = None,
        headers: Mapping[str, str] | None = None,
        key: Any = None,
        route: Any = None,
        errors: Sequence[type[BaseException]] = (),
    ) -> Any:
        """Send ``message`` and return its handler's reply (see ``EventEmitter.request``)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds).")
        if not self._opened:
            await self._open()
        loop = asyncio.get_running_loop()
        correlation = f"{self._prefix}{next(self._ids):x}"
        t_end = loop.time() + timeout
        hdrs = dict(headers) if headers else {}
        hdrs[HEADER_CORRELATION_ID] = correlation
        # A deadline passed in (forwarded from an upstream request) wins.
        hdrs.setdefault(HEADER_DEADLINE, f"{time.time() + timeout:.6f}")
        out = self._build(message, headers=hdrs, key=key, route=route)
        fut: asyncio.Future[Message] = loop.create_future()
        self._pending[correlation] = fut
        try:
            await self.producer.send_request(out)
            try:
                async with asyncio.timeout_at(t_end):
                    answer = await fut
            except TimeoutError:
                raise RequestTimeoutError(
                    f"No reply to {type(message).__name__} within {timeout:g}s "
                    f"(correlation id {correlation}).\nIs a dispatcher with its handler "
                    "running and keeping up? Raise timeout= if the handler is slow."
                ) from None
        finally:
            self._pending.pop(correlation, None)
        return self._result(message, answer, reply, errors)

    def _result(
        self,
        message: EventBase,
        answer: Message,
        reply: Any,
        errors: Sequence[type[BaseException]],
    ) -> Any:
        hdrs = answer.headers
        status = hdrs.get(HEADER_REPLY_STATUS)
        if status == STATUS_OK:
            tp = reply if reply is not None else reply_type_of(type(message))
            if tp is None:
                tp = Any
            model, unwrap = reply_model(tp)
            value = self._decode(answer, model)
            return value.root if unwrap else value
        if status == STATUS_EXPIRED:
            raise RequestExpiredError(
                f"{type(message).__name__} reached its handler after its deadline and was not "
                "run.\nRaise timeout=, or add consumers so requests wait less."
            )
        etype = hdrs.get(HEADER_ERROR_TYPE) or "Exception"
        text = hdrs.get(HEADER_ERROR_MESSAGE) or ""
        if status == STATUS_NO_HANDLER:
            raise NoHandlerError(
                f"{text or f'No handler takes {type(message).__name__}.'}\nRegister one with "
                f"@router.command/@router.query({type(message).__name__}) in the service "
                "that consumes its topic, or send it to the topic its handler serves."
            )
        for cls in errors:
            if cls.__name__ == etype:
                raise cls(text)
        registered = self.errors.get(etype)
        if registered is not None:
            raise registered(text)
        raise RemoteError(etype, text, retryable=hdrs.get(HEADER_ERROR_RETRYABLE) == "true")
