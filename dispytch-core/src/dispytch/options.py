"""Transport options: one pydantic model per transport, read alike from a URL's query
string and from keyword arguments.

A transport declares its options once, typed and documented::

    class KafkaOptions(TransportOptions):
        group_id: str | None = Field(None, description="Consumer group.")
        max_records: int = Field(100, ge=1, description="Records taken per poll.")

    opts = KafkaOptions.parse("group_id=billing&max_records=50", max_records=10)

Query values are strings and are validated the way pydantic validates strings (so
booleans read ``true/false``, ``1/0``, ``yes/no``, ``on/off`` on every transport alike);
keyword arguments are Python values and win over the query. An unknown name or a bad
value raises :class:`~dispytch.errors.ConfigError` naming the option and, for a typo, the
closest known name. ``TransportSpec.options_model`` publishes the model, so that
``dispytch plugins --json`` can list every transport's options.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Self
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError

from dispytch.errors import ConfigError

__all__ = ["TransportOptions"]


class TransportOptions(BaseModel):
    """Base of a transport's options model: frozen, and unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @classmethod
    def names(cls) -> list[str]:
        """Every option name (field names and their aliases)."""
        out: list[str] = []
        for name, info in cls.model_fields.items():
            out.append(name)
            if info.alias and info.alias != name:
                out.append(info.alias)
        return out

    @classmethod
    def parse(
        cls,
        query: str | Mapping[str, str | Sequence[str]] = "",
        /,
        *,
        ignore: Collection[str] = (),
        **kwargs: Any,
    ) -> Self:
        """Options from a URL query (``"a=1&b=x"`` or a mapping) and keyword arguments.

        Args:
            query: The URL's query string, or a mapping of names to strings (the last
                value of a repeated name wins).
            ignore: Names that may appear and are dropped (another side's options when
                one URL configures a producer and a consumer).
            **kwargs: Python values; they win over the query.

        Raises:
            ConfigError: An unknown option (naming the closest known one) or an invalid
                value (naming the option and what is wrong).
        """
        raw: dict[str, str] = {}
        items = (
            parse_qs(query, keep_blank_values=True).items()
            if isinstance(query, str)
            else (query.items())
        )
        for key, value in items:
            if key in ignore:
                continue
            raw[key] = value if isinstance(value, str) else value[-1]
        values = {k: v for k, v in kwargs.items() if k not in ignore}
        cls._check_names([*raw, *values])
        try:
            from_query = cls.model_validate_strings(raw) if raw else None
            if from_query is None:
                return cls.model_validate(values)
            if not values:
                return from_query
            merged = {name: getattr(from_query, name) for name in from_query.model_fields_set}
            for key, value in values.items():
                merged[cls._field_name(key)] = value
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(cls._explain(exc)) from exc

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """A JSON-ready list of the options: name, type, default and description."""
        out: list[dict[str, Any]] = []
        for name, info in cls.model_fields.items():
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            try:
                json.dumps(default)
            except TypeError:
                default = repr(default)
            out.append(
                {
                    "name": info.alias or name,
                    "type": _type_name(info.annotation),
                    "required": info.is_required(),
                    "default": default,
                    "description": info.description or "",
                }
            )
        return out

    @classmethod
    def _field_name(cls, key: str) -> str:
        for name, info in cls.model_fields.items():
            if key == info.alias:
                return name
        return key

    @classmethod
    def _check_names(cls, given: Sequence[str]) -> None:
        known = cls.names()
        for key in given:
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown {cls._label()} option {key!r}.{hint} "
                f"Known options: {', '.join(sorted(known)) or 'none'}."
            )

    @classmethod
    def _label(cls) -> str:
        name = cls.__name__
        return name[: -len("Options")] if name.endswith("Options") and name != "Options" else name

    @classmethod
    def _explain(cls, exc: ValidationError) -> str:
        parts = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "<options>"
            given = err.get("input")
            parts.append(f"{where}={given!r}: {err['msg']}")
        return f"Invalid {cls._label()} option: " + "; ".join(parts) + "."


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
