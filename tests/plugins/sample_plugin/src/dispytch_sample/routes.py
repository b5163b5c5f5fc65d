"""Routes of the spool transport: a topic is a sub-directory of the spool directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dispytch.routes import EventRoute, EventSubscription


@dataclass(frozen=True, kw_only=True)
class SampleEventRoute(EventRoute):
    """Publish to ``topic`` (placeholders such as ``"user.{user_id}"`` allowed).

    Attributes:
        topic: The topic; one directory per topic under the spool directory.
    """

    topic: str
    address_fields: ClassVar[tuple[str, ...]] = ("topic",)


@dataclass(frozen=True, kw_only=True)
class SampleEventSubscription(EventSubscription):
    """Consume a topic, or every topic matching a pattern (``"user.{user_id}"``, ``"a.*"``).

    Attributes:
        topic: Topic name or route pattern.
    """

    topic: str

    @property
    def route_pattern(self) -> str:
        return self.topic
