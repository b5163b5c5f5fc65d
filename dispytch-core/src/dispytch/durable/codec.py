"""Arguments, results and errors of durable functions, encoded by type annotations.

No pickle: every value is validated and serialised to JSON by a pydantic ``TypeAdapter``
built from the function's signature, and revived by the same adapter, so a ``tuple``, a
``datetime``, a ``Decimal`` or a model comes back as itself. A value pydantic cannot
encode is an error when the call is made, not when a worker recovers it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import traceback as tb
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from dispytch.durable.errors import RunFailedError, UnencodableError

__all__ = ["ErrorInfo", "FunctionCodec", "canonical", "decode_error", "encode_error"]


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text (and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class FunctionCodec:
    """Encodes one function's arguments and result by its annotations.

    Args:
        func: The function (its signature and type hints are read once).
        name: Its durable name, part of every argument hash.
    """

    def __init__(self, func: Callable[..., Any], name: str) -> None:
        self.name = name
        self.signature = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception:  # an annotation that does not resolve: treat as Any
            hints = {}
        self._params: dict[str, tuple[inspect._ParameterKind, TypeAdapter[Any]]] = {}
        for pname, param in self.signature.parameters.items():
            hint: Any = hints.get(pname, Any)
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                hint = tuple[hint, ...]
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                hint = dict[str, hint]
            self._params[pname] = (param.kind, TypeAdapter(hint))
        ret: Any = hints.get("return", Any)
        self._result: TypeAdapter[Any] = TypeAdapter(Any if ret is None else ret)
        self._none_result = "return" in hints and ret is type(None)

    def encode_args(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], str, str]:
        """Validate and encode a call's arguments.

        Returns:
            The validated positional and keyword arguments (what the function is called
            with), their JSON text and the call's hash (name and arguments).

        Raises:
            TypeError: The arguments do not fit the signature.
            UnencodableError: A value does not validate or cannot be serialised.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        encoded: dict[str, Any] = {}
        validated: dict[str, Any] = {}
        for pname, value in bound.arguments.items():
            _, adapter = self._params[pname]
            try:
                checked = adapter.validate_python(value)
                encoded[pname] = adapter.dump_python(checked, mode="json")
            except (ValidationError, PydanticSerializationError) as exc:
                raise UnencodableError(
                    f"{self.name}: argument {pname!r} ({type(value).__name__}) cannot be "
                    f"encoded: {_first_line(exc)}\n"
                    "Annotate the parameter with a type pydantic serialises to JSON."
                ) from None
            validated[pname] = checked
        call_args, call_kwargs = self._split(validated)
        text = canonical(encoded)
        return call_args, call_kwargs, text, self.hash_of(text)

    def hash_of(self, args_json: str) -> str:
        """The hash replay compares: the function's name and its encoded arguments."""
        return hashlib.sha256(f"{self.name}\0{args_json}".encode()).hexdigest()[:32]

    def decode_args(self, args_json: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments stored by :meth:`encode_args`."""
        raw = json.loads(args_json)
        unknown = set(raw) - set(self._params)
        if unknown:
            raise TypeError(
                f"{self.name} has no parameter(s) {', '.join(sorted(unknown))} any more."
            )
        values: dict[str, Any] = {}
        for pname, (_, adapter) in self._params.items():  # the signature's order
            if pname in raw:
                values[pname] = adapter.validate_python(raw[pname])
        return self._split(values)

    def _split(self, values: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for pname, value in values.items():
            kind = self._params[pname][0]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[pname] = value
            else:
                args.append(value)
        return tuple(args), kwargs

    def encode_result(self, value: Any) -> str:
        """The result as JSON text, by the return annotation.

        Raises:
            UnencodableError: It does not validate against the annotation or cannot be
                serialised.
        """
        try:
            checked = self._result.validate_python(value)
            return self._result.dump_json(checked).decode()
        except (ValidationError, PydanticSerializationError) as exc:
            raise UnencodableError(
                f"{self.name}: its result ({type(value).__name__}) cannot be encoded: "
                f"{_first_line(exc)}\nAnnotate the return type with a type pydantic "
                "serialises to JSON."
            ) from None

    def decode_result(self, text: str) -> Any:
        """The result stored by :meth:`encode_result`, as its type."""
        return self._result.validate_json(text)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class ErrorInfo:
    """An exception as stored: never the object itself."""

    type: str
    module: str
    message: str
    traceback: str
    retryable: bool


def encode_error(exc: BaseException, *, retryable: bool) -> str:
    """An exception as JSON text: type, module, message, traceback text, retryability."""
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return canonical(
        {
            "type": type(exc).__qualname__,
            "module": type(exc).__module__,
            "message": str(exc),
            "traceback": text[-16_000:],
            "retryable": retryable,
        }
    )


def decode_error(
    run_id: str, text: str, registered: Mapping[str, type[BaseException]]
) -> BaseException:
    """The stored exception revived: its own type when registered, else RunFailedError."""
    data = json.loads(text)
    info = ErrorInfo(
        type=str(data.get("type", "Exception")),
        module=str(data.get("module", "")),
        message=str(data.get("message", "")),
        traceback=str(data.get("traceback", "")),
        retryable=bool(data.get("retryable", False)),
    )
    cls = registered.get(f"{info.module}.{info.type}") or registered.get(info.type)
    failed = RunFailedError(
        run_id, info.type, info.message, info.traceback, retryable=info.retryable
    )
    if cls is not None:
        try:
            revived = cls(info.message)
        except Exception:
            return failed
        revived.__cause__ = failed
        return revived
    return failed
