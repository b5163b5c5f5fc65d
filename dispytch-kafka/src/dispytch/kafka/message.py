"""The :class:`KafkaMessage` a Kafka consumer yields for each record."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any

from dispytch.kafka.offsets import Delivery
from dispytch.transport import Message

#: Headers of a record that has none (shared: read-only).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class KafkaMessage(Message):
    """A :class:`~dispytch.transport.Message` made from an aiokafka ``ConsumerRecord``.

    ``lane`` is the record's ``TopicPartition`` (``None`` with ``ordered=False``).
    ``metadata`` (``topic``, ``partition``, ``offset``, ``timestamp`` in ms) is read from
    the record when first asked for, and headers are decoded when read: most handlers
    never look, and a consumer makes one of these per record.
    """

    __slots__ = ("_meta", "record")

    def __init__(
        self, record: Any, headers: Mapping[str, str], lane: Hashable | None, token: Delivery
    ) -> None:
        value = record.value
        self.payload = value if value is not None else b""
        self.route = record.topic
        self.headers = headers
        self.key = record.key
        self.attempt = token.attempt
        self.lane = lane
        self.token = token
        #: The aiokafka ``ConsumerRecord`` this message was made from.
        self.record = record
        self._meta: Mapping[str, Any] | None = None

    @property
    def metadata(self) -> Mapping[str, Any]:  # type: ignore[override]
        """``topic``, ``partition``, ``offset`` and ``timestamp`` (ms) of the record."""
        meta = self._meta
        if meta is None:
            rec = self.record
            meta = self._meta = {
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "timestamp": rec.timestamp,
            }
        return meta
