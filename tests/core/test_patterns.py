"""Route patterns: matching, captures, broker translations, malformed patterns, and
route parameters injected into handlers (validated by annotation)."""

from __future__ import annotations

import fnmatch
import logging
import re
from typing import TYPE_CHECKING

import pytest
from dispytch import Event, EventBase, HandlerRegistrationError, TopicSubscription
from dispytch.patterns import RoutePattern
from pydantic import BaseModel

if TYPE_CHECKING:
    from tests.core.conftest import Kit


def _amqp_match(binding: str, route: str) -> bool:
    """AMQP topic-exchange semantics ("*" one word, "#" zero or more words)."""
    words = binding.split(".")
    parts = route.split(".")

    def go(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(parts)
        if words[i] == "#":
            return any(go(i + 1, k) for k in range(j, len(parts) + 1))
        if j == len(parts):
            return False
        return (words[i] == "*" or words[i] == parts[j]) and go(i + 1, j + 1)

    return go(0, 0)


# (pattern, routes that match, routes that do not)
CASES = [
    ("user_events", ["user_events"], ["user_events.x", "user", "x.user_events"]),
    ("user.events", ["user.events"], ["user", "user.events.x", "userXevents"]),
    ("orders.*", ["orders.eu", "orders.us"], ["orders", "orders.eu.x", "x.orders.eu"]),
    ("*.created", ["user.created", "order.created"], ["created", "a.b.created"]),
    ("audit.#", ["audit", "audit.x", "audit.x.y.z"], ["auditx", "x.audit"]),
    ("#.done", ["done", "a.done", "a.b.done"], ["a.done.x", "adone"]),
    ("a.#.b", ["a.b", "a.x.b", "a.x.y.b"], ["a.b.c", "b", "a"]),
    ("#", ["a", "a.b.c"], []),
    (
        "user.{user_id}.created",
        ["user.42.created", "user.ann.created"],
        ["user.created", "user.1.2.created", "user.42.deleted"],
    ),
    ("tenant-{t}.orders.*", ["tenant-acme.orders.eu"], ["tenant-.orders.eu", "acme.orders.eu"]),
]


@pytest.mark.parametrize(("pattern", "yes", "no"), CASES)
def test_match_and_translations_agree(pattern: str, yes: list[str], no: list[str]) -> None:
    rp = RoutePattern(pattern)
    rx = re.compile(rp.regex)
    for route in yes:
        assert rp.match(route) is not None, route
        # Every translation must match at least the routes the pattern matches.
        assert rx.fullmatch(route), (rp.regex, route)
        assert fnmatch.fnmatchcase(route, rp.glob), (rp.glob, route)
        assert _amqp_match(rp.amqp, route), (rp.amqp, route)
    for route in no:
        assert rp.match(route) is None, route
        # The regex (Kafka subscribes by it) must be exact, not a superset.
        assert not rx.fullmatch(route), (rp.regex, route)


def test_static_pattern_is_static_and_matches_only_itself() -> None:
    rp = RoutePattern("user.events")
    assert rp.is_static
    assert rp.names == ()
    assert rp.match("user.events") == {}
    assert rp.match("user.event") is None
    assert not RoutePattern("user.*").is_static
    assert not RoutePattern("user.{id}").is_static


def test_placeholders_are_captured_by_name() -> None:
    rp = RoutePattern("user.{user_id}.{action}")
    assert rp.names == ("user_id", "action")
    assert rp.match("user.42.created") == {"user_id": "42", "action": "created"}
    assert RoutePattern("tenant-{t}.#").match("tenant-acme.a.b") == {"t": "acme"}
    assert RoutePattern("#.{last}").match("a.b.c") == {"last": "c"}


def test_translations() -> None:
    rp = RoutePattern("user.{user_id}.created")
    assert rp.regex == r"^user\.[^.]+\.created$"
    assert rp.glob == "user.*.created"
    assert rp.amqp == "user.*.created"
    # A placeholder inside a word: AMQP cannot match part of a word.
    assert RoutePattern("tenant-{t}.x").amqp == "*.x"
    assert RoutePattern("audit.#").amqp == "audit.#"
    # Glob metacharacters in literal names are escaped.
    assert RoutePattern("a[1].{x}").glob == r"a\[1\].*"


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("", "cannot be empty"),
        ("a..b", "empty segment"),
        ("a.", "empty segment"),
        (".a", "empty segment"),
        ("user.{id}.{id}", r"placeholder \{id\} twice"),
        ("user.{id", "malformed placeholder"),
        ("user.{1x}", "malformed placeholder"),
        ("user.id}", "malformed placeholder"),
    ],
)
def test_malformed_patterns_raise(pattern: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RoutePattern(pattern)


def test_malformed_subscription_is_reported_at_registration(kit: Kit) -> None:
    d = kit.dispatcher()
    with pytest.raises(HandlerRegistrationError, match="empty segment"):
        d.handler(topic="user..events")


def test_pattern_equality_and_hash() -> None:
    assert RoutePattern("a.*") == RoutePattern("a.*")
    assert len({RoutePattern("a.*"), RoutePattern("a.*"), RoutePattern("a.#")}) == 2
    assert "a.*" in repr(RoutePattern("a.*"))


# -- route parameters in handlers ------------------------------------------------------


class Ping(BaseModel):
    n: int


class UserPing(EventBase):
    __topic__ = "user.{user_id}.events"
    user_id: str
    n: int


async def test_route_params_injected_and_converted(kit: Kit) -> None:
    d = kit.dispatcher()
    seen: list[tuple[int, str, int]] = []

    @d.handler(TopicSubscription(topic="user.{user_id}.{kind}"))
    async def on_user(user_id: int, kind: str, event: Event[Ping]) -> None:
        seen.append((user_id, kind, event.body.n))
        assert event.params == {"user_id": str(user_id), "kind": kind}

    async with d:
        await kit.emitter.emit(UserPing(user_id="42", n=1))
        await kit.until(lambda: seen, "the handler")
    assert seen == [(42, "events", 1)]
    assert isinstance(seen[0][0], int)


async def test_route_param_mismatch_rejects_message_and_loop_continues(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    seen: list[int] = []

    @d.handler(topic="user.{user_id}.events")
    async def on_user(user_id: int) -> None:
        seen.append(user_id)

    with caplog.at_level(logging.ERROR, logger="dispytch"):
        async with d:
            await kit.emitter.emit(UserPing(user_id="ann", n=1))
            await kit.emitter.emit(UserPing(user_id="7", n=2))
            await kit.until(lambda: seen and d.stats["rejected"] == 1, "both messages")
    assert seen == [7]
    assert [m.route for m in kit.broker.rejected] == ["user.ann.events"]
    text = caplog.text
    assert "user_id='ann'" in text and "is not a valid" in text and "on_user" in text


def test_wildcard_characters_inside_a_word_are_literal() -> None:
    rp = RoutePattern("a*b.c")
    assert rp.is_static
    assert rp.match("a*b.c") == {}
    assert rp.match("axb.c") is None
    assert re.fullmatch(rp.regex, "a*b.c") and not re.fullmatch(rp.regex, "axb.c")
