"""Mapping pydantic models to and from generated Protobuf message classes.

Every model field must have a message field of the same name and a matching kind; message
fields the model does not name are left alone (written unset, skipped on reading), which
is how Protobuf itself evolves. The kinds:

================================  ==============================================
Python                            Protobuf field
================================  ==============================================
``bool`` ``int`` ``float``        ``bool``; any integer type; ``double``/``float``
``str`` ``bytes``                 ``string``; ``bytes``
``Enum`` subclass                 ``enum``: member ``PRO`` is value ``PRO`` or
                                  ``TIER_PRO`` (the enum's name as a prefix)
``datetime`` / ``timedelta``      ``google.protobuf.Timestamp`` / ``Duration``
``UUID`` ``Decimal`` ``date``     ``string`` (their text form)
nested ``BaseModel``              a message field (mapped the same way)
``list``/``set``/``tuple[X,...]`` ``repeated``
``dict[K, V]``                    ``map<K, V>``
``X | None``                      a field with presence (``optional`` or a message)
================================  ==============================================

A field that cannot be mapped is a :class:`ProtobufMappingError` naming it, raised when
the class is first compiled: by :func:`check_mapping`, by the serializer's ``prepare`` or
``decoder``, or at the latest by the first ``encode``.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import threading
import types
import typing
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Union, get_args, get_origin

from dispytch.errors import DispytchError
from pydantic import BaseModel

MISSING: Any = object()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)  # naive datetimes are taken as UTC, as protobuf does

Setter = Callable[[Any, Any], None]  # (message, value)
Getter = Callable[[Any], Any]  # message -> value or MISSING


class ProtobufMappingError(DispytchError, TypeError):
    """A model that cannot be mapped to its ``__protobuf__`` message class."""


@dataclass(frozen=True)
class CompiledMapping:
    """How one model is written as, and read from, its message class.

    Attributes:
        model: The pydantic class.
        message_class: The generated message class (``__protobuf__``).
        fill: ``(message, model instance) -> None``: sets the message's fields.
        read: ``message -> dict`` pydantic validates into the model.
    """

    model: type[BaseModel]
    message_class: type[Any]
    fill: Setter
    read: Getter


_cache: weakref.WeakKeyDictionary[type[BaseModel], CompiledMapping] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def check_mapping(model: type[BaseModel]) -> CompiledMapping:
    """Compile (once per class) and return how ``model`` maps to its message class.

    Call it at import time next to the class to fail at startup rather than at the first
    emit.

    Raises:
        ProtobufMappingError: When the class names no message class, or a field has no
            matching message field (the message names it).
    """
    found = _cache.get(model)
    if found is not None:
        return found
    with _lock:
        found = _cache.get(model)
        if found is None:
            found = _cache[model] = _compile(model)
    return found


def _compile(model: type[BaseModel]) -> CompiledMapping:
    cls = getattr(model, "__protobuf__", None)
    if cls is None or not hasattr(cls, "DESCRIPTOR"):
        raise ProtobufMappingError(
            f"{model.__name__} names no Protobuf message class (__protobuf__ is {cls!r}).\n"
            f"Set __protobuf__ = your_pb2.{model.__name__} on the class (from protoc's "
            "generated module)."
        )
    builder = _Builder(model)
    fill, read = builder.message(model, cls.DESCRIPTOR, "")
    return CompiledMapping(model, cls, fill, read)


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(fd.label == fd.LABEL_REPEATED)  # protobuf < 6.31


def _is_map(fd: Any) -> bool:
    return bool(
        _is_repeated(fd) and fd.message_type is not None and fd.message_type.GetOptions().map_entry
    )


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


class _Builder:
    def __init__(self, root: type[BaseModel]) -> None:
        self.root = root
        self.memo: dict[tuple[type[Any], str], tuple[Setter, Getter]] = {}

    def fail(self, path: str, fd: Any, why: str) -> ProtobufMappingError:
        where = fd.full_name if fd is not None else "the message"
        return ProtobufMappingError(
            f"{self.root.__name__}.{path}: cannot be mapped to Protobuf field {where} "
            f"({why}).\n"
            "Change the model or the .proto so they agree (see docs/schemas.md)."
        )

    def message(self, model: type[BaseModel], desc: Any, path: str) -> tuple[Setter, Getter]:
        key = (model, desc.full_name)
        known = self.memo.get(key)
        if known is not None:
            return known
        # Recursive messages: later references go through this table.
        table: list[tuple[Setter, Getter]] = []

        def late_fill(msg: Any, value: Any) -> None:
            table[0][0](msg, value)

        def late_read(msg: Any) -> Any:
            return table[0][1](msg)

        self.memo[key] = (late_fill, late_read)
        setters: list[tuple[str, Setter]] = []
        getters: list[tuple[str, Getter]] = []
        for fname, info in model.model_fields.items():
            where = f"{path}.{fname}" if path else fname
            fd = desc.fields_by_name.get(fname)
            if fd is None:
                raise ProtobufMappingError(
                    f"{self.root.__name__}.{where}: message {desc.full_name} has no field "
                    f"{fname!r}.\nAdd it to the .proto (a new field number) or remove it "
                    "from the model."
                )
            setter, getter = self.field(info.annotation, fd, where)
            setters.append((fname, setter))
            key_name = info.alias if info.alias and info.alias != fname else fname
            getters.append((key_name, getter))

        def fill(msg: Any, value: Any) -> None:
            values = value.__dict__
            for name, setter in setters:
                v = values[name]
                if v is not None:
                    setter(msg, v)

        def read(msg: Any) -> Any:
            out = {}
            for name, getter in getters:
                v = getter(msg)
                if v is not MISSING:
                    out[name] = v
            return out

        table.append((fill, read))
        self.memo[key] = (fill, read)
        return fill, read

    def field(self, annotation: Any, fd: Any, path: str) -> tuple[Setter, Getter]:
        annotation = _unwrap(annotation)
        name = fd.name
        optional = False
        if get_origin(annotation) in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1 or len(args) == len(get_args(annotation)):
                raise self.fail(path, fd, "only X | None unions map to Protobuf")
            if not fd.has_presence:
                raise self.fail(
                    path, fd, "X | None needs a field with presence: 'optional' or a message"
                )
            annotation = _unwrap(args[0])
            optional = True
        if _is_map(fd):
            return self.map_field(annotation, fd, path)
        if _is_repeated(fd):
            return self.repeated_field(annotation, fd, path)
        if fd.type == fd.TYPE_MESSAGE:
            fill, read = self.message_value(annotation, fd, path)

            def set_msg(msg: Any, value: Any) -> None:
                fill(getattr(msg, name), value)

            def get_msg(msg: Any) -> Any:
                if not msg.HasField(name):
                    return None if optional else MISSING
                return read(getattr(msg, name))

            return set_msg, get_msg
        out, into = self.scalar(annotation, fd, path)
        presence = fd.has_presence

        def set_scalar(msg: Any, value: Any) -> None:
            setattr(msg, name, out(value) if out is not None else value)

        def get_scalar(msg: Any) -> Any:
            if presence and not msg.HasField(name):
                return None if optional else MISSING
            v = getattr(msg, name)
            return into(v) if into is not None else v

        return set_scalar, get_scalar

    def repeated_field(self, annotation: Any, fd: Any, path: str) -> tuple[Setter, Getter]:
        origin = get_origin(annotation)
        args = get_args(annotation)
        if origin not in (list, set, frozenset, tuple) or not args:
            raise self.fail(path, fd, "a repeated field maps to list[X], set[X] or tuple[X, ...]")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise self.fail(path, fd, "only tuple[X, ...] maps to a repeated field")
        item = _unwrap(args[0])
        name = fd.name
        if fd.type == fd.TYPE_MESSAGE:
            fill, read = self.message_value(item, fd, f"{path}[]")

            def set_msgs(msg: Any, values: Any) -> None:
                container = getattr(msg, name)
                for v in values:
                    fill(container.add(), v)

            def get_msgs(msg: Any) -> Any:
                return [read(m) for m in getattr(msg, name)]

            return set_msgs, get_msgs
        out, into = self.scalar(item, fd, f"{path}[]")

        def set_items(msg: Any, values: Any) -> None:
            getattr(msg, name).extend([out(v) for v in values] if out is not None else values)

        def get_items(msg: Any) -> Any:
            items = getattr(msg, name)
            return [into(v) for v in items] if into is not None else list(items)

        return set_items, get_items

    def map_field(self, annotation: Any, fd: Any, path: str) -> tuple[Setter, Getter]:
        if get_origin(annotation) is not dict or len(get_args(annotation)) != 2:
            raise self.fail(path, fd, "a map field maps to dict[K, V]")
        key_t, value_t = (_unwrap(a) for a in get_args(annotation))
        entry = fd.message_type
        kfd, vfd = entry.fields_by_name["key"], entry.fields_by_name["value"]
        kout, kin = self.scalar(key_t, kfd, f"{path}{{key}}")
        name = fd.name
        if vfd.type == vfd.TYPE_MESSAGE:
            fill, read = self.message_value(value_t, vfd, f"{path}{{}}")

            def set_map(msg: Any, values: Any) -> None:
                container = getattr(msg, name)
                for k, v in values.items():
                    fill(container[kout(k) if kout else k], v)

            def get_map(msg: Any) -> Any:
                return {(kin(k) if kin else k): read(v) for k, v in getattr(msg, name).items()}

            return set_map, get_map
        vout, vin = self.scalar(value_t, vfd, f"{path}{{}}")

        def set_scalars(msg: Any, values: Any) -> None:
            container = getattr(msg, name)
            for k, v in values.items():
                container[kout(k) if kout else k] = vout(v) if vout else v

        def get_scalars(msg: Any) -> Any:
            return {
                (kin(k) if kin else k): (vin(v) if vin else v)
                for k, v in getattr(msg, name).items()
            }

        return set_scalars, get_scalars

    def message_value(self, annotation: Any, fd: Any, path: str) -> tuple[Setter, Getter]:
        """Fill/read a sub-message in place (composite fields cannot be assigned)."""
        full = fd.message_type.full_name
        if full == "google.protobuf.Timestamp":
            if annotation is not dt.datetime:
                raise self.fail(path, fd, "a Timestamp maps to datetime")

            # Timestamp.FromDatetime/ToDatetime do the same through time tuples, slower.
            def set_ts(sub: Any, value: Any) -> None:
                delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
                sub.seconds = delta.days * 86_400 + delta.seconds
                sub.nanos = delta.microseconds * 1000

            def get_ts(sub: Any) -> Any:
                return _EPOCH + dt.timedelta(seconds=sub.seconds, microseconds=sub.nanos // 1000)

            return set_ts, get_ts
        if full == "google.protobuf.Duration":
            if annotation is not dt.timedelta:
                raise self.fail(path, fd, "a Duration maps to timedelta")

            def set_dur(sub: Any, value: Any) -> None:
                sub.FromTimedelta(value)

            def get_dur(sub: Any) -> Any:
                return sub.ToTimedelta()

            return set_dur, get_dur
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self.message(annotation, fd.message_type, path)
        raise self.fail(path, fd, f"message {full} maps to a pydantic model")

    def scalar(
        self, annotation: Any, fd: Any, path: str
    ) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
        """``(to proto, from proto)`` converters; None where the value passes as it is."""
        t = fd.type
        ints = {
            fd.TYPE_INT32,
            fd.TYPE_INT64,
            fd.TYPE_UINT32,
            fd.TYPE_UINT64,
            fd.TYPE_SINT32,
            fd.TYPE_SINT64,
            fd.TYPE_FIXED32,
            fd.TYPE_FIXED64,
            fd.TYPE_SFIXED32,
            fd.TYPE_SFIXED64,
        }
        if annotation is bool and t == fd.TYPE_BOOL:
            return None, None
        if annotation is int and t in ints:
            return None, None
        if annotation is float and t in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
            return None, None
        if annotation is str and t == fd.TYPE_STRING:
            return None, None
        if annotation is bytes and t == fd.TYPE_BYTES:
            return None, None
        if annotation in (uuid.UUID, Decimal) and t == fd.TYPE_STRING:
            return str, None  # pydantic parses the text form back
        if annotation is dt.date and t == fd.TYPE_STRING:
            return dt.date.isoformat, None
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            if t != fd.TYPE_ENUM:
                raise self.fail(path, fd, "an Enum maps to a Protobuf enum")
            return self.enum(annotation, fd, path)
        raise self.fail(
            path,
            fd,
            f"{getattr(annotation, '__name__', annotation)} does not match its Protobuf type",
        )

    def enum(
        self, cls: type[enum.Enum], fd: Any, path: str
    ) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        edesc = fd.enum_type
        prefix = _upper_snake(edesc.name) + "_"
        by_name = edesc.values_by_name
        to_number: dict[enum.Enum, int] = {}
        for member in cls:
            value = by_name.get(member.name) or by_name.get(prefix + member.name)
            if value is None:
                raise self.fail(
                    path,
                    fd,
                    f"member {member.name} has no value {member.name} or "
                    f"{prefix}{member.name} in enum {edesc.full_name}",
                )
            to_number[member] = value.number
        to_member = {n: m for m, n in to_number.items()}
        enum_name = edesc.full_name

        def out(value: Any) -> Any:
            return to_number[value if isinstance(value, cls) else cls(value)]

        def into(number: Any) -> Any:
            member = to_member.get(number)
            if member is None:
                raise ValueError(
                    f"{enum_name} value {number} has no member in {cls.__name__} (at {path})"
                )
            return member

        return out, into
