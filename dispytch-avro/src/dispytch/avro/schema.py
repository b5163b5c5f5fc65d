"""Avro schemas derived from pydantic models, and the converters between both.

An event class becomes an Avro record: one field per model field, in declaration order,
named as the Python attribute (not its alias). The mapping:

===========================  =================================================
Python                       Avro
===========================  =================================================
``bool``                     ``boolean``
``int``                      ``long``
``float``                    ``double``
``str``                      ``string``
``bytes``                    ``bytes``
``datetime``                 ``long`` / ``timestamp-micros`` (naive values are UTC)
``pydantic.NaiveDatetime``   ``long`` / ``local-timestamp-micros``
``date``                     ``int`` / ``date``
``time``                     ``long`` / ``time-micros``
``Decimal`` (max_digits and  ``bytes`` / ``decimal`` with that precision and scale
decimal_places set)
``UUID``                     ``string`` / ``uuid``
``Enum`` subclass            ``enum`` whose symbols are the member names
nested ``BaseModel``         ``record`` (named once, referenced by name after)
``list``/``set``/``tuple``   ``array``
``dict[str, X]``             ``map``
``X | None``, ``X | Y``      ``union`` (at most one record, array and map branch)
===========================  =================================================

Anything else (``Any``, ``Literal``, ``timedelta``, a ``Decimal`` without precision,
``dict`` with non-string keys...) is an :class:`AvroSchemaError` naming the field, raised
the first time the class is compiled: by :func:`schema_for`, by ``AvroSerializer.prepare``
or ``decoder`` (dispatcher start), or at the latest by the first ``encode``.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import threading
import types
import typing
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Union, get_args, get_origin

from dispytch.errors import DispytchError
from pydantic import AwareDatetime, BaseModel, NaiveDatetime
from pydantic_core import PydanticUndefined

Converter = Callable[[Any], Any]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)


class AvroSchemaError(DispytchError, TypeError):
    """An event class that Avro cannot express, or an explicit schema that does not fit it."""


@dataclass(frozen=True)
class CompiledModel:
    """What the serializers need for one model class, computed once.

    Attributes:
        model: The pydantic class.
        name: The record's full name.
        schema: The Avro schema as plain JSON data (with defaults and docs).
        parsed: The same, parsed by fastavro.
        canonical: Its Parsing Canonical Form (what the fingerprint is taken of).
        fingerprint: CRC-64-AVRO of the canonical form, 8 bytes little-endian (the
            single-object encoding's byte order).
        to_avro: Model instance -> Avro datum.
        from_avro: Avro datum -> dict pydantic validates into the model.
    """

    model: type[BaseModel]
    name: str
    schema: dict[str, Any]
    parsed: Any
    canonical: str
    fingerprint: bytes
    to_avro: Converter
    from_avro: Converter


_cache: weakref.WeakKeyDictionary[type[BaseModel], CompiledModel] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def compile_model(model: type[BaseModel]) -> CompiledModel:
    """The Avro schema and converters of ``model`` (cached per class).

    Raises:
        AvroSchemaError: When a field has no Avro form (the message names it), or the
            class's explicit ``__avro_schema__`` does not parse or does not fit the model.
    """
    found = _cache.get(model)
    if found is not None:
        return found
    with _lock:
        found = _cache.get(model)
        if found is None:
            found = _cache[model] = _compile(model)
    return found


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro schema of an event class, as JSON data (a copy: yours to change).

    Call it at import time next to the class to fail at startup rather than at the first
    emit: a field Avro cannot express raises :class:`AvroSchemaError` naming it.
    """
    return json.loads(json.dumps(compile_model(model).schema))  # type: ignore[no-any-return]


def canonical_form(schema: Mapping[str, Any] | str) -> tuple[Any, str, bytes]:
    """``(parsed, parsing canonical form, CRC-64-AVRO fingerprint as 8 bytes LE)``."""
    import fastavro.schema

    raw = json.loads(schema) if isinstance(schema, str) else dict(schema)
    parsed = fastavro.schema.parse_schema(raw, _write_hint=False)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return parsed, canonical, rabin_fingerprint(canonical.encode())


_FP_EMPTY = 0xC15D213AA4D7A795
_FP_TABLE: list[int] = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_FP_EMPTY & -(_fp & 1))
    _FP_TABLE.append(_fp)


def rabin_fingerprint(data: bytes) -> bytes:
    """CRC-64-AVRO (the Avro specification's Rabin fingerprint), 8 bytes little-endian."""
    fp = _FP_EMPTY
    table = _FP_TABLE
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp.to_bytes(8, "little")


# -- derivation -------------------------------------------------------------------------


def _record_name(model: type[Any]) -> str:
    # Not inherited: a subclass is another record unless it says otherwise.
    name = model.__dict__.get("__avro_name__") or model.__name__
    if not isinstance(name, str) or not all(_NAME.match(p) for p in name.split(".")):
        raise AvroSchemaError(
            f"{model.__name__}: {name!r} is not a valid Avro name.\n"
            "Set __avro_name__ = 'namespace.Name' (letters, digits, underscores) on the class."
        )
    return name


def _compile(model: type[BaseModel]) -> CompiledModel:
    explicit = model.__dict__.get("__avro_schema__")
    if explicit is not None:
        return _compile_explicit(model, explicit)
    builder = _Builder(model)
    schema, to_avro, from_avro = builder.record(model, "")
    try:
        parsed, canonical, fingerprint = canonical_form(schema)
    except Exception as exc:  # a derivation bug, said plainly rather than hidden
        raise AvroSchemaError(
            f"{model.__name__}: the derived Avro schema does not parse: {exc}\n"
            "Set an explicit __avro_schema__ on the class and report the model."
        ) from exc
    assert isinstance(schema, dict)
    return CompiledModel(
        model,
        schema["name"],
        schema,
        parsed,
        canonical,
        fingerprint,
        to_avro or _identity,
        from_avro or _identity,
    )


def _identity(value: Any) -> Any:
    return value


def _compile_explicit(model: type[BaseModel], explicit: Any) -> CompiledModel:
    where = f"{model.__name__}.__avro_schema__"
    try:
        raw = (
            json.loads(explicit) if isinstance(explicit, str) else json.loads(json.dumps(explicit))
        )
        parsed, canonical, fingerprint = canonical_form(raw)
    except Exception as exc:
        raise AvroSchemaError(
            f"{where} is not a valid Avro schema: {exc}\n"
            "Give a record schema as a dict or JSON string (the Avro specification's form)."
        ) from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise AvroSchemaError(f"{where} must be a record schema.\nGive a 'type': 'record'.")
    in_schema = {f["name"]: f for f in raw.get("fields", ())}
    for name, field in model.model_fields.items():
        if name not in in_schema and field.is_required():
            raise AvroSchemaError(
                f"{where} has no field {name!r}, which {model.__name__} requires.\n"
                f"Add {name!r} to the schema's fields or give the model field a default."
            )
    for name, f in in_schema.items():
        if name not in model.model_fields and "default" not in f:
            raise AvroSchemaError(
                f"{where} field {name!r} is not a field of {model.__name__} and has no "
                "default.\nAdd it to the model or give it a default in the schema."
            )
    names = list(in_schema)

    def to_avro(event: Any) -> Any:
        return event.model_dump(include=set(names))

    return CompiledModel(
        model, raw["name"], raw, parsed, canonical, fingerprint, to_avro, _identity
    )


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` (keeping its metadata)."""
    metadata: list[Any] = []
    while get_origin(annotation) is typing.Annotated:
        annotation, *extra = get_args(annotation)
        metadata.extend(extra)
    return annotation, metadata


class _Builder:
    def __init__(self, root: type[BaseModel]) -> None:
        self.root = root
        # full name -> the Python type it stands for, and its converters once known
        self.named: dict[str, Any] = {}
        self.converters: dict[str, tuple[Converter | None, Converter | None]] = {}

    def fail(self, path: str, annotation: Any, why: str) -> AvroSchemaError:
        shown = getattr(annotation, "__name__", None) or repr(annotation)
        return AvroSchemaError(
            f"{self.root.__name__}.{path}: type {shown} cannot be written as Avro ({why}).\n"
            "Change the field to a type Avro expresses (see docs/schemas.md), or set an "
            "explicit __avro_schema__ on the class."
        )

    # Each builder returns (avro type, encoder or None, decoder or None); None means the
    # value passes through unchanged, which keeps the common cases free of Python calls.

    def record(self, model: type[BaseModel], path: str) -> tuple[Any, Converter | None, Any]:
        name = _record_name(model)
        known = self.named.get(name)
        if known is not None:
            if known is not model:
                raise self.fail(path or "<root>", model, f"a second type is named {name!r}")
            # Referenced again (or recursively): converters resolved late through the table.
            return name, self._late(name, 0), self._late(name, 1)
        self.named[name] = model
        self.converters[name] = (None, None)
        fields: list[dict[str, Any]] = []
        encs: list[tuple[str, Converter]] = []
        decs: list[tuple[str, str, Converter | None]] = []
        for fname, info in model.model_fields.items():
            where = f"{path}.{fname}" if path else fname
            if not _NAME.match(fname):
                raise self.fail(where, info.annotation, f"{fname!r} is not a valid Avro name")
            annotation = info.annotation
            metadata = list(info.metadata)
            annotation, more = _unwrap(annotation)
            metadata.extend(more)
            default = info.default
            if default is PydanticUndefined and info.default_factory is not None:
                try:
                    default = info.default_factory()  # type: ignore[call-arg]
                except TypeError:
                    default = PydanticUndefined
            avro, enc, dec = self.of(annotation, metadata, where, default)
            entry: dict[str, Any] = {"name": fname, "type": avro}
            if info.description:
                entry["doc"] = info.description
            if default is not PydanticUndefined:
                try:
                    entry["default"] = self.json_default(enc(default) if enc else default, avro)
                except Exception:  # a default Avro cannot carry: the field is required
                    pass
            fields.append(entry)
            if enc is not None:
                encs.append((fname, enc))
            alias = info.validation_alias if isinstance(info.validation_alias, str) else None
            alias = alias or info.alias
            if dec is not None or (alias and alias != fname):
                decs.append((fname, alias or fname, dec))
        schema: dict[str, Any] = {"type": "record", "name": name, "fields": fields}
        if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
            schema["doc"] = " ".join(model.__doc__.split())
        enc_rec = _record_encoder(encs)
        dec_rec = _record_decoder(decs)
        self.converters[name] = (enc_rec, dec_rec)
        return schema, enc_rec, dec_rec

    def _late(self, name: str, which: int) -> Converter | None:
        table = self.converters
        current = table[name][which]
        if current is not None:
            return current
        if which == 0:
            # A model referenced before its own encoder exists (recursion): always convert.

            def late_enc(value: Any) -> Any:
                f = table[name][0]
                return f(value) if f is not None else dict(value.__dict__)

            return late_enc

        def late_dec(value: Any) -> Any:
            f = table[name][1]
            return f(value) if f is not None else value

        return late_dec

    def of(
        self, annotation: Any, metadata: list[Any], path: str, default: Any = PydanticUndefined
    ) -> tuple[Any, Converter | None, Converter | None]:
        annotation, more = _unwrap(annotation)
        metadata = [*metadata, *more]
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType):
            return self.union(annotation, path, default)
        if annotation is type(None):
            return "null", None, None
        if annotation is bool:
            return "boolean", None, None
        if annotation is int:
            return "long", None, None
        if annotation is float:
            return "double", None, None
        if annotation is str:
            return "string", None, None
        # Decoders of the types below also accept the Avro JSON form: fastavro fills a
        # field the writer did not have with the reader schema's default as written there.
        if annotation is bytes:
            return "bytes", None, _dec_bytes
        if annotation is NaiveDatetime:
            return {"type": "long", "logicalType": "local-timestamp-micros"}, None, _dec_local
        if annotation is dt.datetime or annotation is AwareDatetime:
            return {"type": "long", "logicalType": "timestamp-micros"}, None, _dec_instant
        if annotation is dt.date:
            return {"type": "int", "logicalType": "date"}, None, _dec_date
        if annotation is dt.time:
            return {"type": "long", "logicalType": "time-micros"}, _naive_time, _dec_time
        if annotation is uuid.UUID:
            return {"type": "string", "logicalType": "uuid"}, None, _dec_uuid
        if annotation is Decimal:
            return self.decimal(metadata, path)
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return self.enum(annotation, path)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self.record(annotation, path)
        if origin in (list, set, frozenset, tuple) or annotation in (list, set, frozenset):
            args = get_args(annotation)
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                raise self.fail(path, annotation, "only tuple[X, ...] maps to an array")
            if not args:
                raise self.fail(path, annotation, "give the item type, e.g. list[int]")
            items, enc, dec = self.of(args[0], [], f"{path}[]")
            return {"type": "array", "items": items}, _each(enc), _each(dec)
        if origin is dict or annotation is dict:
            args = get_args(annotation)
            if len(args) != 2:
                raise self.fail(path, annotation, "give key and value types, e.g. dict[str, int]")
            if args[0] is not str:
                raise self.fail(path, annotation, "Avro map keys are strings")
            values, enc, dec = self.of(args[1], [], f"{path}{{}}")
            return {"type": "map", "values": values}, _values(enc), _values(dec)
        raise self.fail(path, annotation, "no Avro type for it")

    def decimal(self, metadata: list[Any], path: str) -> tuple[Any, None, Converter]:
        digits = places = None
        for m in metadata:
            if getattr(m, "max_digits", None) is not None:
                digits = m.max_digits
            if getattr(m, "decimal_places", None) is not None:
                places = m.decimal_places
        if digits is None or places is None:
            raise self.fail(
                path,
                Decimal,
                "Avro decimals have a fixed precision and scale: declare "
                "Field(max_digits=..., decimal_places=...)",
            )
        scale: int = places

        def dec(value: Any) -> Any:
            if isinstance(value, Decimal):
                return value
            if isinstance(value, str):  # a default in Avro's JSON form
                unscaled = int.from_bytes(value.encode("latin-1"), "big", signed=True)
                return Decimal(unscaled).scaleb(-scale)
            raise TypeError("not a decimal")

        return (
            {"type": "bytes", "logicalType": "decimal", "precision": digits, "scale": places},
            None,
            dec,
        )

    def enum(self, cls: type[enum.Enum], path: str) -> tuple[Any, Converter, Converter]:
        name = _record_name(cls)
        members: dict[str, enum.Enum] = dict(cls.__members__)

        def enc(value: Any) -> Any:
            return value.name if isinstance(value, enum.Enum) else cls(value).name

        def dec(symbol: Any) -> Any:
            if not isinstance(symbol, str):
                raise TypeError("not an enum symbol")
            return members[symbol]

        known = self.named.get(name)
        if known is not None:
            if known is not cls:
                raise self.fail(path, cls, f"a second type is named {name!r}")
            return name, enc, dec
        self.named[name] = cls
        symbols = list(members)
        bad = [s for s in symbols if not _NAME.match(s)]
        if bad:
            raise self.fail(path, cls, f"member name {bad[0]!r} is not a valid Avro symbol")
        return {"type": "enum", "name": name, "symbols": symbols}, enc, dec

    def union(
        self, annotation: Any, path: str, default: Any
    ) -> tuple[Any, Converter | None, Converter | None]:
        args = list(get_args(annotation))
        if default is None and type(None) in args:
            args.remove(type(None))
            args.insert(0, type(None))
        elif default is not PydanticUndefined and default is not None:
            # Avro: a union's default is of its first branch.
            for i, a in enumerate(args):
                base, _ = _unwrap(a)
                base = get_origin(base) or base
                if isinstance(base, type) and isinstance(default, base):
                    args.insert(0, args.pop(i))
                    break
        branches: list[Any] = []
        convs: list[tuple[Any, Converter | None, Converter | None]] = []
        complex_kinds: set[str] = set()
        for a in args:
            avro, b_enc, b_dec = self.of(a, [], path)
            kind = str(avro.get("type")) if isinstance(avro, dict) else str(avro)
            if kind in ("record", "array", "map", "enum") or (
                isinstance(avro, str) and avro in self.named
            ):
                kind = "named type" if isinstance(avro, str) else kind
                if kind in complex_kinds:
                    raise self.fail(path, annotation, f"more than one {kind} branch in a union")
                complex_kinds.add(kind)
            if isinstance(avro, list):
                raise self.fail(path, annotation, "nested unions")
            branches.append(avro)
            base, _ = _unwrap(a)
            convs.append((get_origin(base) or base, b_enc, b_dec))
        if all(enc is None and dec is None for _, enc, dec in convs):
            return branches, None, None
        # Branch by Python type on the way out; fastavro reports which branch it read
        # only as a value, so the decoder tries the converting branches by shape.
        enc_by: list[tuple[Any, Converter]] = [(t, e) for t, e, _ in convs if e is not None]
        dec_by: list[Converter] = [d for _, _, d in convs if d is not None]

        def enc(value: Any) -> Any:
            for t, e in enc_by:
                if isinstance(t, type) and isinstance(value, t):
                    return e(value)
            return value

        def dec(value: Any) -> Any:
            if value is None:
                return None
            for d in dec_by:
                try:
                    return d(value)
                except (KeyError, TypeError, ValueError):
                    continue
            return value

        return branches, enc, dec

    def json_default(self, datum: Any, avro: Any) -> Any:
        """An Avro datum as the JSON an Avro schema's ``default`` holds."""
        if isinstance(avro, list):
            return self.json_default(datum, avro[0])
        if isinstance(avro, str):
            if avro in self.named:
                target = self.named[avro]
                if isinstance(target, type) and issubclass(target, enum.Enum):
                    return datum
                raise ValueError("defaults of recursive records are not written")
            if avro == "bytes":
                return datum.decode("latin-1")
            return datum
        kind = avro.get("type")
        logical = avro.get("logicalType")
        if logical == "timestamp-micros":
            if datum.tzinfo is None:
                datum = datum.replace(tzinfo=dt.UTC)
            return (datum - _EPOCH) // dt.timedelta(microseconds=1)
        if logical == "local-timestamp-micros":
            return (datum - _EPOCH_NAIVE) // dt.timedelta(microseconds=1)
        if logical == "date":
            return (datum - _EPOCH_DATE).days
        if logical == "time-micros":
            return (
                (datum.hour * 60 + datum.minute) * 60 + datum.second
            ) * 1_000_000 + datum.microsecond
        if logical == "uuid":
            return str(datum)
        if logical == "decimal":
            unscaled = int(datum.scaleb(avro["scale"]))
            size = max(1, (unscaled.bit_length() + 8) // 8)
            return unscaled.to_bytes(size, "big", signed=True).decode("latin-1")
        if kind == "record":
            return {
                f["name"]: self.json_default(datum[f["name"]], f["type"]) for f in avro["fields"]
            }
        if kind == "array":
            return [self.json_default(x, avro["items"]) for x in datum]
        if kind == "map":
            return {k: self.json_default(v, avro["values"]) for k, v in datum.items()}
        if kind == "enum":
            return datum
        return self.json_default(datum, kind)


def _dec_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    raise TypeError("not bytes")


def _dec_instant(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value
    if type(value) is int:
        return _EPOCH + dt.timedelta(microseconds=value)
    raise TypeError("not a timestamp")


def _dec_local(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value
    if type(value) is int:
        return _EPOCH_NAIVE + dt.timedelta(microseconds=value)
    raise TypeError("not a local timestamp")


def _dec_date(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value
    if type(value) is int:
        return _EPOCH_DATE + dt.timedelta(days=value)
    raise TypeError("not a date")


def _dec_time(value: Any) -> Any:
    if isinstance(value, dt.time):
        return value
    if type(value) is int:
        seconds, micros = divmod(value, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return dt.time(hour, minute, second, micros)
    raise TypeError("not a time")


def _dec_uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        return uuid.UUID(value)
    raise TypeError("not a UUID")


def _naive_time(value: Any) -> Any:
    # Avro time-micros carries no zone.
    return value.replace(tzinfo=None) if value.tzinfo is not None else value


def _each(conv: Converter | None) -> Converter | None:
    if conv is None:
        return None

    def each(items: Any) -> Any:
        if not isinstance(items, list):
            raise TypeError("not an array")
        return [conv(x) for x in items]

    return each


def _values(conv: Converter | None) -> Converter | None:
    if conv is None:
        return None

    def values(mapping: Any) -> Any:
        if not isinstance(mapping, dict):
            raise TypeError("not a map")
        return {k: conv(v) for k, v in mapping.items()}

    return values


def _record_encoder(encs: list[tuple[str, Converter]]) -> Converter:
    if not encs:
        # fastavro reads the values it needs by key: the model's own field dict will do.
        return lambda m: m.__dict__

    def enc(m: Any) -> Any:
        d = dict(m.__dict__)
        for name, f in encs:
            v = d[name]
            if v is not None:
                d[name] = f(v)
        return d

    return enc


def _record_decoder(decs: list[tuple[str, str, Converter | None]]) -> Converter | None:
    if not decs:
        return None

    def dec(d: Any) -> Any:
        if not isinstance(d, dict):
            raise TypeError("not a record")
        for name, key, f in decs:
            if name in d:
                v = d.pop(name) if key != name else d[name]
                d[key] = f(v) if f is not None and v is not None else v
        return d

    return dec
