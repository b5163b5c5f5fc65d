"""Payload formats. JSON by default; msgpack when ``msgpack`` is installed.

A serializer encodes an event to bytes and, once per handler, compiles a decoder that
turns payload bytes straight into the handler's event type (for JSON, pydantic's
``validate_json``: no intermediate dict).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, TypeAdapter

T = TypeVar("T")

JSON_CONTENT_TYPE = "application/json"
MSGPACK_CONTENT_TYPE = "application/msgpack"


@runtime_checkable
class Serializer(Protocol):
    """Encodes events and builds decoders for a content type."""

    content_type: str

    def encode(self, event: BaseModel) -> bytes:
        """Serialise one event."""
        ...

    def decoder(self, target: type[T]) -> Callable[[bytes], T]:
        """Return a function that decodes and validates a payload into ``target``."""
        ...


class JsonSerializer:
    """JSON through pydantic-core, both ways, straight from and to bytes."""

    content_type = JSON_CONTENT_TYPE

    def encode(self, event: BaseModel) -> bytes:
        return event.__pydantic_serializer__.to_json(event)

    def decoder(self, target: type[T]) -> Callable[[bytes], T]:
        if isinstance(target, type) and issubclass(target, BaseModel):
            # The model's own core validator: model_validate_json without its Python wrapper.
            return target.__pydantic_validator__.validate_json
        return TypeAdapter(target).validate_json


class MsgpackSerializer:
    """MessagePack: smaller payloads; values go through pydantic's JSON mode."""

    content_type = MSGPACK_CONTENT_TYPE

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:
            if exc.name != "msgpack":
                raise
            raise ImportError(
                "The msgpack serializer needs the msgpack package.\n"
                "Install it with: pip install 'dispytch-core[msgpack]'"
            ) from exc
        self._packb: Callable[[Any], bytes] = msgpack.packb
        self._unpackb: Callable[[bytes], Any] = msgpack.unpackb

    def encode(self, event: BaseModel) -> bytes:
        return self._packb(event.model_dump(mode="json"))

    def decoder(self, target: type[T]) -> Callable[[bytes], T]:
        unpack = self._unpackb
        if isinstance(target, type) and issubclass(target, BaseModel):
            validate: Callable[[Any], Any] = target.model_validate
        else:
            validate = TypeAdapter(target).validate_python

        def decode(payload: bytes) -> T:
            return validate(unpack(payload))  # type: ignore[no-any-return]

        return decode
