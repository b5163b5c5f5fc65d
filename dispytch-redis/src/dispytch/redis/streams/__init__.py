"""The Redis Streams consumer, split along its seams.

* :mod:`.consumer` -- the facade: subscribe, start, listen, ack, nack, stop, close;
* :mod:`.reader` -- the ``XREADGROUP`` loop and turning entries into messages;
* :mod:`.recovery` -- the keeper: discovery, lease refresh, ``XAUTOCLAIM``, delivery
  counts, ``max_deliveries`` (where to look for "why was my entry redelivered");
* :mod:`.settle` -- batched ``XACK``, hand-back and dead letters.
"""

from __future__ import annotations

from dispytch.redis.streams.consumer import RedisStreamConsumer, default_consumer_name

__all__ = ["RedisStreamConsumer", "default_consumer_name"]
