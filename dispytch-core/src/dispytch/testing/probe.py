"""A consumer probe: forwards to a real consumer and counts what the dispatcher took from
it and has not settled yet (the quantity the README bounds by ``max_in_flight``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

from dispytch.routes import EventSubscription
from dispytch.transport import (
    Capabilities,
    Consumer,
    LanePausing,
    LeaseExtension,
    Message,
    capabilities_of,
)


class ConsumerProbe:
    """Wraps a consumer; the dispatcher sees the same consumer, the case sees counts.

    A message counts as *unsettled* from the moment ``listen()`` yields it until the
    dispatcher (or a manual acknowledger) calls ``ack``/``nack`` for it.

    Args:
        inner: The transport's consumer.
        extra: Subscriptions added to whatever the dispatcher subscribes (a route no
            handler takes, for the unknown-route case).

    Attributes:
        taken: Messages yielded in all.
        max_unsettled: The most unsettled at any moment.
        max_unsettled_per_lane: The same, per :attr:`Message.lane` (lane ``None`` too).
    """

    def __init__(self, inner: Consumer, extra: Sequence[EventSubscription] = ()) -> None:
        self.inner = inner
        self.extra = list(extra)
        self.taken = 0
        self.max_unsettled = 0
        self.max_unsettled_per_lane: dict[Hashable, int] = {}
        self._unsettled: set[Message] = set()
        self._per_lane: dict[Hashable, int] = {}

    @property
    def capabilities(self) -> Capabilities:
        """What the wrapped consumer declares."""
        return capabilities_of(self.inner)

    @property
    def unsettled(self) -> int:
        """Messages taken and not settled right now."""
        return len(self._unsettled)

    def __getattr__(self, name: str) -> Any:
        # Anything else a dispatcher may read from its consumer (not the protocols: those
        # are real methods on the subclasses probe() picks, for isinstance checks).
        return getattr(self.inner, name)

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        self.inner.subscribe([*subscriptions, *self.extra])

    async def start(self) -> None:
        await self.inner.start()

    async def listen(self) -> AsyncIterator[Message]:
        messages = self.inner.listen()
        try:
            async for msg in messages:
                self._took(msg)
                yield msg
        finally:
            aclose = getattr(messages, "aclose", None)
            if aclose is not None:
                await aclose()

    def _took(self, msg: Message) -> None:
        self.taken += 1
        self._unsettled.add(msg)
        self.max_unsettled = max(self.max_unsettled, len(self._unsettled))
        n = self._per_lane[msg.lane] = self._per_lane.get(msg.lane, 0) + 1
        self.max_unsettled_per_lane[msg.lane] = max(self.max_unsettled_per_lane.get(msg.lane, 0), n)

    def _settled(self, msg: Message) -> None:
        if msg in self._unsettled:
            self._unsettled.discard(msg)
            self._per_lane[msg.lane] -= 1

    async def ack(self, message: Message) -> None:
        self._settled(message)
        await self.inner.ack(message)

    async def nack(self, message: Message, *, requeue: bool, **kw: Any) -> None:
        self._settled(message)
        await self.inner.nack(message, requeue=requeue, **kw)

    async def stop(self) -> None:
        await self.inner.stop()

    async def close(self) -> None:
        await self.inner.close()


class _Pausing(ConsumerProbe):
    def pause(self, lane: Hashable) -> None:
        assert isinstance(self.inner, LanePausing)
        self.inner.pause(lane)

    def resume(self, lane: Hashable) -> None:
        assert isinstance(self.inner, LanePausing)
        self.inner.resume(lane)


class _Extending(ConsumerProbe):
    async def extend(self, message: Message) -> None:
        assert isinstance(self.inner, LeaseExtension)
        await self.inner.extend(message)


class _PausingExtending(_Pausing, _Extending):
    pass


def probe(inner: Consumer, extra: Sequence[EventSubscription] = ()) -> ConsumerProbe:
    """A :class:`ConsumerProbe` around ``inner`` that implements exactly the optional
    protocols (:class:`LanePausing`, :class:`LeaseExtension`) that ``inner`` implements."""
    pausing = isinstance(inner, LanePausing)
    extending = isinstance(inner, LeaseExtension)
    cls: type[ConsumerProbe] = (
        _PausingExtending
        if pausing and extending
        else _Pausing
        if pausing
        else _Extending
        if extending
        else ConsumerProbe
    )
    return cls(inner, extra)
