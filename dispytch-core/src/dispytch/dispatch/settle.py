"""Settlement: how the handling of a message ended -> counters -> ack / nack / requeue.

:class:`AckPolicy` says when a message is acknowledged; :class:`Settler` applies it:

- ``AFTER`` (default): handled, filtered, dead-lettered, skipped -> ``ack``; failed for
  good -> logged at ERROR, ``nack(requeue=False)``; asked for redelivery (``RequeueMessage``)
  -> ``nack(requeue=True)``, after a backoff that grows with the delivery attempt
  (``nack(..., delay=)`` where the consumer declares ``delayed_requeue``, so no slot is
  held meanwhile; no wait at all where it declares that requeue is a no-op).
- ``BEFORE``: acknowledged on receipt; outcomes are only counted.
- ``MANUAL``: the handler settles through its :class:`~dispytch.Acknowledger`. A message
  it did not settle is held (counted in :attr:`Settler.unsettled`) until something settles
  it or the dispatcher stops and hands it back; at ``max_unsettled`` held the reader waits.
  A message no handler body saw (unknown route, skipped, filtered) is settled as under
  ``AFTER``, since nothing else could.

A request (a command or query with a correlation id and a reply address) that no handler
takes is answered ``no-handler`` at once, so its caller raises ``NoHandlerError`` instead of
waiting for its timeout, and is acknowledged: answered requests are never redelivered.

Every message read is in :attr:`Settler.inflight` until it is settled; on stop, what is
left there is handed back with ``nack(requeue=True)``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from dispytch.backoff import Backoff
from dispytch.context import MessageState
from dispytch.errors import PayloadError, RequeueMessage, UnknownRouteError
from dispytch.message import HEADER_EVENT_TYPE, Message
from dispytch.transport import Acknowledger, Capabilities, Consumer

log = logging.getLogger("dispytch.dispatcher")


class AckPolicy(enum.StrEnum):
    """When a message is acknowledged.

    ``AFTER`` (default, at-least-once): once every handler finished, or the message was
    dead-lettered. ``BEFORE`` (at-most-once): as soon as it is received; a crash or a
    failure afterwards loses it. ``MANUAL``: never by Dispytch; handlers take an
    :class:`~dispytch.Acknowledger` parameter and settle it themselves. A message left
    unsettled is held (it counts against ``max_unsettled``) until your code settles it or
    the dispatcher stops, when it is handed back.
    """

    AFTER = "after"
    BEFORE = "before"
    MANUAL = "manual"


# Enum members read once: a member looked up on its class costs a descriptor call, and
# these are compared for every message.
AFTER, BEFORE, MANUAL = AckPolicy.AFTER, AckPolicy.BEFORE, AckPolicy.MANUAL

_MANUAL_WARNING = (
    "Manual acknowledgement: a message on %r was neither acked nor nacked by its "
    "handlers. It is held unsettled until your code settles it or the dispatcher stops, "
    "when it is handed back; meanwhile Kafka cannot commit past it, RabbitMQ counts it "
    "against the prefetch window, Redis Streams keeps it pending. At max_unsettled=%d "
    "held messages reading pauses. (Logged once; stats['held_unsettled'] counts them.)"
)


class Settler:
    """Counts outcomes and settles messages with the consumer as the policy says.

    Args:
        consumer: Settles messages (``ack``/``nack``).
        policy: The acknowledgement policy.
        stats: The dispatcher's counters (shared, updated in place).
        capabilities: The consumer's: whether requeue works and can be delayed.
        requeue_backoff: The wait before a requeue, by delivery attempt.
        max_unsettled: ``MANUAL``: messages held unsettled before reading waits.
        wake: Called when a held message is settled (the reader may go on).
        refuse: Answers a request that no handler takes (a ``no-handler`` reply to its
            caller); ``True`` when ``message`` was one and was answered. ``None``: the
            consumer cannot reply.

    Attributes:
        inflight: Messages read and not yet settled.
        unsettled: ``MANUAL``: messages whose handlers returned without settling them.
    """

    def __init__(
        self,
        consumer: Consumer,
        policy: AckPolicy,
        stats: Counter[str],
        *,
        capabilities: Capabilities,
        requeue_backoff: Backoff,
        max_unsettled: int,
        wake: Callable[[], None] = lambda: None,
        refuse: Callable[[Message], Awaitable[bool]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.policy = policy
        self.stats = stats
        self.capabilities = capabilities
        self.requeue_backoff = requeue_backoff
        self.max_unsettled = max_unsettled
        self.wake = wake
        self.refuse = refuse
        self.inflight: set[Message] = set()
        self.unsettled: set[Message] = set()
        self._acks: dict[Message, Acknowledger] = {}
        self._warned = False

    # -- manual acknowledgement --------------------------------------------------------------
    def acknowledger_for(self, message: Message) -> Acknowledger:
        """The manual acknowledger of ``message``; it settles correctly also after the
        handler returned, and frees the message's count when it does."""
        ack = Acknowledger(self.consumer, message, on_settled=self._settled_by_user)
        self._acks[message] = ack
        return ack

    def _settled_by_user(self, message: Message) -> None:
        # Before the consumer call: a stop that hands back what is left must not settle
        # it a second time (RabbitMQ closes the channel on a second ack of one delivery).
        self.inflight.discard(message)
        self._acks.pop(message, None)
        if message in self.unsettled:
            self.unsettled.discard(message)
            self.wake()

    @property
    def unsettled_full(self) -> bool:
        """Whether as many messages are held unsettled as ``max_unsettled`` allows."""
        return len(self.unsettled) >= self.max_unsettled

    async def hand_back(self) -> int:
        """Hand every message still unsettled back for redelivery (on stop).

        Returns how many were handed back.
        """
        count = 0
        try:
            for msg in list(self.inflight):
                self.inflight.discard(msg)
                ack = self._acks.pop(msg, None)
                # Claim it from a late Acknowledger (whose ack would be a second settlement).
                if ack is not None and not ack.claim():
                    continue
                count += 1
                try:
                    await self.consumer.nack(msg, requeue=True)
                except Exception:
                    log.exception("Could not hand %r back to the broker", msg)
        finally:
            # Also when a stop's deadline cut the hand-back short: what was not handed
            # back stays with the broker, and nothing of it is counted here any more.
            self.inflight.clear()
            self.unsettled.clear()
            self._acks.clear()
        return count

    # -- outcomes ----------------------------------------------------------------------------
    def failed(self, handler: str, msg: Message, exc: BaseException, attempt: int) -> bool:
        """Log and count a handler's failure; ``True`` when it asked for redelivery."""
        if isinstance(exc, RequeueMessage):
            log.warning("Handler %r asked to redeliver %r: %s", handler, msg.route, exc)
            return True
        self.stats["failed_handlers"] += 1
        if isinstance(exc, PayloadError):
            # The same bytes will never decode: one line, no traceback (noise at volume).
            self.stats["invalid_payload"] += 1
            log.error(
                "Handler %r: invalid payload on route %r (%d bytes, delivery %d), rejecting it: %s",
                handler,
                msg.route,
                len(msg.payload),
                msg.attempt,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return False
        log.error(
            "Handler %r failed for good on route %r (%d bytes, attempt %d, delivery %d): %s: %s",
            handler,
            msg.route,
            len(msg.payload),
            attempt,
            msg.attempt,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return False

    async def unknown_route(self, msg: Message) -> None:
        """No handler takes ``msg``'s route: counted, logged, rejected (``AFTER``, and
        ``MANUAL`` since no handler could settle it)."""
        self.stats["unknown_route"] += 1
        log.warning(
            "No handler for route %r (%d bytes, headers %s); rejecting it.",
            msg.route,
            len(msg.payload),
            dict(msg.headers),
        )
        if self.policy is BEFORE:
            self.inflight.discard(msg)
            if self.refuse is not None:
                await self.refuse(msg)
        elif self.refuse is not None and await self.refuse(msg):
            # A request, answered "no-handler": answered requests are not redelivered.
            await self.settle(msg, self.consumer.ack)
        else:
            msg.error = UnknownRouteError(f"No handler takes the route {msg.route!r}.")
            await self.settle(msg, self.consumer.nack, requeue=False)

    async def conclude(
        self,
        msg: Message,
        shared: MessageState | None,
        ran: int,
        requeue: bool,
        failed: BaseException | None,
        *,
        dead: bool = False,
        filtered: int = 0,
    ) -> None:
        """Count how the handling of ``msg`` ended and settle it as the policy says."""
        consumer = self.consumer
        policy = self.policy
        stats = self.stats
        if requeue:
            stats["requeued"] += 1
            if policy is AFTER:
                await self._requeue(msg)
                return
        elif failed is not None:
            stats["rejected"] += 1
            if policy is AFTER:
                msg.error = failed
                await self.settle(msg, consumer.nack, requeue=False)
                return
        elif dead:
            stats["dead_lettered"] += 1
        elif ran and filtered == ran:
            stats["filtered"] += 1
            if policy is MANUAL and (shared is None or shared.acknowledger is None):
                await self.settle(msg, consumer.ack)  # no handler body saw it
                return
        elif ran:
            stats["handled"] += 1
        else:
            # Handlers take this route, but none takes this event type.
            stats["skipped"] += 1
            log.info(
                "No handler takes event type %r on route %r; acknowledging it (skipped).",
                msg.headers.get(HEADER_EVENT_TYPE),
                msg.route,
            )
            if self.refuse is not None:
                await self.refuse(msg)  # a request: its caller hears at once
            if policy is MANUAL:
                await self.settle(msg, consumer.ack)  # no handler could settle it
                return
        if policy is AFTER:
            await self.settle(msg, consumer.ack)
        elif policy is MANUAL:
            self._hold(msg, shared)
        else:
            self.inflight.discard(msg)

    def _hold(self, msg: Message, shared: MessageState | None) -> None:
        ack = shared.acknowledger if shared is not None else None
        if ack is not None and ack.settled:
            return
        if msg not in self.inflight:
            return  # settled meanwhile (or handed back by a stop)
        self.unsettled.add(msg)
        self.stats["held_unsettled"] += 1
        if not self._warned and not (ack is not None and ack.held):
            self._warned = True
            log.warning(_MANUAL_WARNING, msg.route, self.max_unsettled)

    async def _requeue(self, msg: Message) -> None:
        caps = self.capabilities
        # Brokers redeliver a requeued message at once; a short backoff that grows with the
        # delivery attempt keeps a persistent cause (a dead-letter route that is down) from
        # turning into a hot loop.
        delay = self.requeue_backoff.delay(msg.attempt) if caps.requeue else 0.0
        if delay > 0 and caps.delayed_requeue:
            # The broker waits: no slot is held meanwhile.
            await self.settle(msg, self.consumer.nack, requeue=True, delay=delay)
            return
        if delay > 0:
            await asyncio.sleep(delay)
        await self.settle(msg, self.consumer.nack, requeue=True)

    async def settle(self, msg: Message, action: Callable[..., Any], **kw: Any) -> None:
        """``action(msg, **kw)`` (``ack`` or ``nack``), after forgetting ``msg``; a failure
        to settle is logged (the broker delivers the message again)."""
        self.inflight.discard(msg)
        try:
            await action(msg, **kw)
        except Exception:
            settle_failed(msg)


def settle_failed(msg: Message) -> None:
    """Log that the broker did not take a settlement (it will deliver ``msg`` again)."""
    log.exception(
        "Could not settle a message on %r with the broker; it will be delivered again",
        msg.route,
    )
