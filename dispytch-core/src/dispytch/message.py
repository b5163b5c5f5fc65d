"""The ground floor: one message as a broker delivered it, and Dispytch's header names.

Everything above reads these (the dispatcher, the context middleware sees, the codecs, the
transports); this module imports nothing of Dispytch, so any layer may use it.
:mod:`dispytch.transport` re-exports every name here, which is where transports import
them from.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

#: Header names Dispytch itself writes. Transports carry them like any other header.
HEADER_EVENT_TYPE = "dispytch-event-type"
HEADER_CONTENT_TYPE = "dispytch-content-type"
HEADER_EVENT_ID = "dispytch-event-id"
HEADER_TIMESTAMP = "dispytch-timestamp"
HEADER_ERROR_TYPE = "dispytch-error-type"
HEADER_ERROR_MESSAGE = "dispytch-error-message"
HEADER_ERROR_ATTEMPTS = "dispytch-error-attempts"
HEADER_ORIGINAL_ROUTE = "dispytch-original-route"
HEADER_DEAD_LETTERED_AT = "dispytch-dead-lettered-at"

_D = TypeVar("_D")


class EncodedHeaders(Mapping[str, str]):
    """Message headers as a broker hands them over: ``(name, bytes)`` pairs, decoded as
    UTF-8 (invalid bytes replaced, ``None`` read as ``""``) only when read.

    Most messages are read for one or two headers (the content type, maybe the event
    type): a lookup scans the pairs and decodes only the value asked for, instead of
    decoding every header of every message into a dict up front. Where a name repeats
    (Kafka allows it), the last value wins. Anything that walks the mapping (``dict()``,
    iteration, ``len``) decodes it all once.
    """

    __slots__ = ("_decoded", "_pairs")

    def __init__(self, pairs: Sequence[tuple[str, bytes | None]]) -> None:
        self._pairs = pairs
        self._decoded: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = {
                k: v.decode("utf-8", "replace") if v is not None else "" for k, v in self._pairs
            }
        return decoded

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, /, default: str | _D) -> str | _D: ...
    def get(self, key: str, /, default: object = None) -> object:
        decoded = self._decoded
        if decoded is not None:
            return decoded.get(key, default)
        seen = False
        found: bytes | None = None
        for k, v in self._pairs:  # forward and to the end: the last of a repeated name wins
            if k == key:
                seen, found = True, v
        if not seen:
            return default
        return found.decode("utf-8", "replace") if found is not None else ""

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"EncodedHeaders({self._all()!r})"


class Message:
    """One delivery received from a broker.

    Attributes:
        payload: The raw bytes, exactly as published.
        headers: Message headers as text (transports decode broker headers to ``str``).
        route: The concrete address the message arrived on: a Kafka topic, a RabbitMQ
            routing key, a Redis channel or stream. Subscriptions are matched against it.
        key: The partitioning key, when the transport has one.
        attempt: Delivery attempt, 1 for the first delivery (from the broker's redelivery
            flag or delivery counter where it keeps one).
        metadata: Transport details users may read (partition, offset, delivery tag, ...).
        lane: Messages with the same non-``None`` lane are handled one after another, in
            order (Kafka uses the partition). ``None`` lets the dispatcher run the message
            concurrently with any other.
        token: Whatever the transport needs to acknowledge this delivery. Opaque to core.
        error: Why the failure policy rejected the message: set by the dispatcher right
            before ``nack(requeue=False)`` (the handler's exception, a
            :class:`~dispytch.errors.PayloadError`, an
            :class:`~dispytch.errors.UnknownRouteError`), ``None`` otherwise. A transport
            that dead-letters rejected messages itself (a Redis dead-letter stream) writes
            it into the dead letter. Read it as ``getattr(message, "error", None)`` where a
            subclass may not call ``Message.__init__``.
    """

    __slots__ = (
        "attempt",
        "error",
        "headers",
        "key",
        "lane",
        "metadata",
        "payload",
        "route",
        "token",
    )

    def __init__(
        self,
        payload: bytes,
        *,
        route: str,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
        attempt: int = 1,
        metadata: Mapping[str, Any] | None = None,
        lane: Hashable | None = None,
        token: Any = None,
    ) -> None:
        self.payload = payload
        self.route = route
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.key = key
        self.attempt = attempt
        self.metadata: Mapping[str, Any] = metadata if metadata is not None else {}
        self.lane = lane
        self.token = token
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"Message(route={self.route!r}, {len(self.payload)} bytes, "
            f"attempt={self.attempt}, metadata={dict(self.metadata)!r})"
        )
