"""The Protobuf serializer (``application/x-protobuf``).

Writes an event as its ``__protobuf__`` message class's binary form and reads that form
back into the handler's model. Protobuf carries no schema reference: the reader's message
class decides how the bytes are read, and Protobuf's own rules (field numbers; unknown
fields skipped; absent fields unset) are the evolution story. Bytes that do not parse as
the reader's message, or a value the model refuses, are a :class:`~dispytch.PayloadError`:
the dispatcher rejects that message with the reason and goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from dispytch.errors import PayloadError
from dispytch.protobuf.mapping import ProtobufMappingError, check_mapping
from pydantic import BaseModel

T = TypeVar("T")

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"


class ProtobufSerializer:
    """Protocol Buffers binary through generated message classes.

    The event class names its message class::

        class UserCreated(EventBase):
            __topic__ = "users"
            __protobuf__ = users_pb2.UserCreated
            user_id: int
            email: str
    """

    content_type = PROTOBUF_CONTENT_TYPE

    def __init__(self) -> None:
        import google.protobuf.message

        self._decode_error: type[Exception] = google.protobuf.message.DecodeError
        self._writers: dict[type[Any], Callable[[Any], bytes]] = {}
        self._lock = threading.Lock()

    def prepare(self, *models: type[BaseModel]) -> None:
        """Check these classes' mappings now (before the first event).

        Raises:
            ProtobufMappingError: When a field does not map (the message names it).
        """
        for model in models:
            self._writer(model)

    def encode(self, event: BaseModel) -> bytes:
        """The event as its message class's binary form."""
        write = self._writers.get(type(event))
        if write is None:
            write = self._writer(type(event))
        return write(event)

    def _writer(self, model: type[Any]) -> Callable[[Any], bytes]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ProtobufMappingError(
                f"{model!r} is not a pydantic model.\nEmit an EventBase subclass."
            )
        with self._lock:
            found = self._writers.get(model)
            if found is not None:
                return found
            mapping = check_mapping(model)
            cls, fill = mapping.message_class, mapping.fill

            def encode(event: Any) -> bytes:
                msg = cls()
                fill(msg, event)
                return msg.SerializeToString()  # type: ignore[no-any-return]

            self._writers[model] = encode
            return encode

    def decoder(self, target: type[T]) -> Callable[[bytes], T]:
        """A decoder into ``target`` (its mapping checked now).

        Raises:
            ProtobufMappingError: When ``target`` does not map to its message class.
        """
        if not (isinstance(target, type) and issubclass(target, BaseModel)):
            raise ProtobufMappingError(
                f"{target!r} is not a pydantic model.\n"
                "Type the handler's event as Event[YourEvent]."
            )
        mapping = check_mapping(target)
        parse = mapping.message_class.FromString
        read = mapping.read
        validate = target.model_validate
        decode_error = self._decode_error
        name = mapping.message_class.DESCRIPTOR.full_name

        def decode(payload: bytes) -> T:
            try:
                msg = parse(payload)
            except decode_error as exc:
                raise PayloadError(
                    f"Payload is not a valid Protobuf {name} ({len(payload)} bytes): {exc}\n"
                    "Check that the producer writes this message type, with compatible "
                    "field numbers and types."
                ) from exc
            return validate(read(msg))

        return decode
