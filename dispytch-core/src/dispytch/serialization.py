"""Payload formats. JSON by default; msgpack when ``msgpack`` is installed.

A serializer encodes an event to bytes and, once per handler, compiles a decoder that
turns payload bytes straight into the handler's event type (for JSON, pydantic's
``validate_json``: no intermediate dict). :class:`DecoderCache` picks the decoder for an
incoming message by its content type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, TypeAdapter, ValidationError

from dispytch.errors import PayloadError, PluginError, UnknownContentTypeError
from dispytch.message import HEADER_CONTENT_TYPE, Message

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


def media_type(content_type: str | None) -> str:
    """``content_type`` without its parameters, lower-cased (JSON when it is ``None``):
    ``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    if content_type is None:
        return JSON_CONTENT_TYPE
    return content_type.split(";", 1)[0].strip().lower() or JSON_CONTENT_TYPE


class DecoderCache:
    """Decoders by (content type, model), for the messages a dispatcher receives.

    Decoding by content type is codec work, so it lives beside the serializers; the
    dispatcher hands :meth:`decode` to the context that middleware and dependencies see.
    The serializers come from ``lookup`` (the plugin registry's ``serializer_for``), which
    keeps this module on the ground floor: it does not import the registry.

    Decoders are keyed by the content type without its parameters, so
    ``application/json; charset=utf-8`` and ``application/json`` share one; that table
    holds only content types a serializer served. A small memo in front of it maps the
    header exactly as received to the decoder, and is emptied when it reaches ``limit``
    entries, as is the memo of unknown content types: headers that vary without end
    cannot grow either.

    Args:
        lookup: The serializer for a content type; raises ``PluginError`` when there is
            none.
        served: The content types the installed serializers decode (named in the error
            for an unknown one).
        limit: Entries each memo keeps before it is emptied.
    """

    __slots__ = ("_by_header", "_decoders", "_limit", "_lookup", "_served", "_unknown")

    def __init__(
        self,
        lookup: Callable[[str], Serializer],
        served: Callable[[], Iterable[str]],
        *,
        limit: int = 64,
    ) -> None:
        self._lookup = lookup
        self._served = served
        self._limit = max(1, limit)
        self._decoders: dict[tuple[str, Any], Callable[[bytes], Any]] = {}
        self._by_header: dict[tuple[str | None, Any], Callable[[bytes], Any]] = {}
        self._unknown: dict[str, tuple[str, tuple[str, ...]]] = {}

    def __len__(self) -> int:
        """Decoders held (one per served content type and model)."""
        return len(self._decoders)

    def decoder(self, content_type: str | None, model: Any) -> Callable[[bytes], Any]:
        """The function decoding a payload of ``content_type`` into ``model``.

        Raises:
            UnknownContentTypeError: No installed serializer decodes ``content_type``.
        """
        found = self._by_header.get((content_type, model))
        if found is not None:
            return found
        media = media_type(content_type)
        decode = self._decoders.get((media, model))
        if decode is None:
            decode = self._decoders[(media, model)] = self._serializer(media).decoder(model)
        memo = self._by_header
        if len(memo) >= self._limit:
            memo.clear()
        memo[(content_type, model)] = decode
        return decode

    def _serializer(self, media: str) -> Serializer:
        known = self._unknown.get(media)
        if known is None:
            try:
                return self._lookup(media)
            except PluginError as exc:
                try:
                    served = tuple(sorted(set(self._served())))
                except PluginError:
                    served = ()
                # Served yet not found: the registry refused it (two plugins claim it).
                detail = f" ({str(exc).splitlines()[0]})" if media in served else ""
                known = (detail, served)
                if len(self._unknown) >= self._limit:
                    self._unknown.clear()
                self._unknown[media] = known
        detail, served = known
        raise UnknownContentTypeError(
            f"No installed serializer decodes content type {media!r}{detail}; served: "
            f"{', '.join(served) or 'none'}.\n"
            "Install the serializer plugin for it, or have the producer send one of those.",
            content_type=media,
            served=served,
        )

    def decode(self, msg: Message, model: Any) -> Any:
        """``msg``'s payload validated into ``model``, by the serializer its content type
        names (JSON when it names none).

        Raises:
            UnknownContentTypeError: The content type is one no serializer decodes.
            PayloadError: The payload does not decode or validate (the message says
                which fields are wrong).
        """
        try:
            decode = self.decoder(msg.headers.get(HEADER_CONTENT_TYPE), model)
        except UnknownContentTypeError as exc:
            raise UnknownContentTypeError(
                f"Payload on route {msg.route!r} ({len(msg.payload)} bytes): {exc}",
                content_type=exc.content_type,
                served=exc.served,
            ) from None
        try:
            return decode(msg.payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[:3]
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in first
            )
            raise PayloadError(
                f"Payload on route {msg.route!r} ({len(msg.payload)} bytes) is not a valid "
                f"{getattr(model, '__name__', model)}: {detail}"
            ) from exc
        except Exception as exc:
            raise PayloadError(
                f"Payload on route {msg.route!r} ({len(msg.payload)} bytes) could not be "
                f"decoded: {type(exc).__name__}: {exc}"
            ) from exc
