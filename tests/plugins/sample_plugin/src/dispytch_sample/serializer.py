"""``json-gzip``: JSON compressed with gzip, for large and repetitive payloads."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

T = TypeVar("T")

CONTENT_TYPE = "application/json+gzip"


class GzipJsonSerializer:
    """Encodes events as gzip-compressed JSON; decodes straight into the handler's type.

    Args:
        level: gzip compression level, 1 (fast) to 9 (small).
    """

    content_type = CONTENT_TYPE

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def encode(self, event: BaseModel) -> bytes:
        return gzip.compress(event.model_dump_json().encode(), compresslevel=self.level)

    def decoder(self, target: type[T]) -> Callable[[bytes], T]:
        if isinstance(target, type) and issubclass(target, BaseModel):
            validate: Callable[[bytes], Any] = target.model_validate_json
        else:
            validate = TypeAdapter(target).validate_json

        def decode(payload: bytes) -> T:
            return validate(gzip.decompress(payload))  # type: ignore[no-any-return]

        return decode
