"""Delayed requeue from standard RabbitMQ (no delayed-message plugin): delay queues.

``nack(message, requeue=True, delay=s)`` republishes the delivery to a *delay queue* of
its queue and then acknowledges the original. A delay queue holds messages for one fixed
time, its ``x-message-ttl``, and dead-letters each one when that is over through the
default exchange (``x-dead-letter-exchange: ""``) with the original queue's name as the
routing key (``x-dead-letter-routing-key``): back to the end of the queue it came from.

* **Buckets.** Delays are rounded *up* to one of four buckets per doubling, ``2 ** (k/4)``
  whole milliseconds (..., 91, 108, 128, ..., 862, 1024, 1218, ...; at most 19 % later
  than asked, never sooner), so a backoff with jitter needs a handful of queues, not one
  per value.
* **No head-of-line blocking.** Every message of a delay queue has the same TTL, so the
  oldest is always the first to expire (per-message ``expiration`` would let a long delay
  at the head hold back a short one behind it): the copy carries no ``expiration``.
* **Auto-expiring.** ``x-expires`` deletes a delay queue once it has been unused (no
  consumer, not re-declared) for its TTL plus a margin (at least a minute). Publishing
  does not count as use, so the consumer re-declares a delay queue (renewing its lease)
  when half the margin has passed since it last did: a message published into it always
  leaves before the queue can expire.
* **Names.** ``dispytch.delay.<ms>ms.<queue>`` (a hash stands in for a queue name too
  long for the 255-byte limit). The prefix keeps server-named ``amq.gen-...`` queues
  from producing reserved ``amq.`` names.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

#: AMQP ``x-message-ttl`` is an unsigned 32-bit count of milliseconds.
MAX_DELAY_MS = 2**32 - 1
#: The least a delay queue outlives the last message published into it (ms).
MIN_MARGIN_MS = 60_000
_PREFIX = "dispytch.delay."


def bucket_ms(delay: float) -> int:
    """The delay queue's TTL for ``delay`` seconds: the smallest bucket not shorter.

    Raises:
        ValueError: A delay that is not positive, or longer than AMQP's TTL allows.
    """
    if not delay > 0 or math.isinf(delay):
        raise ValueError(f"A requeue delay must be a positive number of seconds, not {delay!r}.")
    ms = math.ceil(delay * 1000)
    if ms > MAX_DELAY_MS:
        raise ValueError(
            f"A requeue delay of {delay:g}s is longer than RabbitMQ's message TTL allows "
            f"({MAX_DELAY_MS / 1000:g}s)."
        )
    step = math.ceil(4 * math.log2(ms)) if ms > 1 else 0
    value = math.ceil(2 ** (step / 4))
    while value < ms:  # float rounding: never a bucket shorter than asked
        step += 1
        value = math.ceil(2 ** (step / 4))
    return min(value, MAX_DELAY_MS)


def margin_ms(ttl_ms: int) -> int:
    """How long a delay queue outlives its last use: its TTL, at least a minute."""
    return max(MIN_MARGIN_MS, ttl_ms)


def queue_name(queue: str, ttl_ms: int) -> str:
    """The delay queue of ``queue`` for ``ttl_ms``."""
    name = f"{_PREFIX}{ttl_ms}ms.{queue}"
    if len(name.encode()) <= 255:
        return name
    digest = hashlib.sha256(queue.encode()).hexdigest()[:32]
    return f"{_PREFIX}{ttl_ms}ms.{queue.encode()[:150].decode('utf-8', 'ignore')}.{digest}"


def arguments(queue: str, ttl_ms: int) -> dict[str, Any]:
    """The delay queue's arguments: fixed TTL, dead-lettered back to ``queue`` through
    the default exchange, deleted when unused for its TTL plus the margin."""
    return {
        "x-message-ttl": ttl_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": ttl_ms + margin_ms(ttl_ms),
    }
