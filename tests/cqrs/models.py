"""Models shared by the cqrs tests (module level, so annotations resolve)."""

from __future__ import annotations

from dispytch import CommandBase, EventBase, QueryBase
from pydantic import BaseModel


class User(BaseModel):
    id: int
    name: str


class UserCreated(EventBase):
    __topic__ = "cqrs.users.events"
    id: int
    name: str


class AuditLogged(EventBase):
    __topic__ = "cqrs.audit"
    what: str


class CreateUser(CommandBase[UserCreated]):
    __topic__ = "cqrs.users.commands"
    name: str


class RenameUser(CommandBase[None]):
    __topic__ = "cqrs.users.commands"
    id: int
    name: str


class GetUser(QueryBase[User]):
    __topic__ = "cqrs.users.queries"
    id: int


class CountUsers(QueryBase[int]):
    __topic__ = "cqrs.users.queries"


class LocalQuery(QueryBase[str]):
    """No route: served by a Bus only."""

    text: str
