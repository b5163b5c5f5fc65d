"""Hostile input for the conformance suite: what other services, old versions of this one,
or an attacker may publish where a Dispytch consumer listens.

:func:`hostile_inputs` draws raw messages (payload bytes and byte-valued headers) with
hypothesis strategies: random bytes, truncated JSON, JSON of the wrong shape, a field of
the wrong type, text that is not UTF-8, content types nobody serves, header values that are
not UTF-8, and valid events among garbage headers. :func:`named_inputs` adds the cases
every transport must survive by name (an empty payload, a 1 MB payload, a garbage header,
an unserved content type). :func:`expected_event` is the oracle: the event a correct
consumer hands to the handler, or ``None`` when the failure policy must take the message.

Why hypothesis is driven this way: the cases that publish these are async, talk to a real
broker, and judge a whole batch at once (a consumer loop must survive *all* of it, and the
valid events among it must all arrive), which ``@given`` on an async test with fixtures
does not do well. So :func:`hostile_inputs` runs a synchronous ``@given`` function that only
collects what hypothesis generates (its generation phase, with ``derandomize=True``: the
same inputs on every run and every machine, so a failure reproduces), and the case then
publishes the list. What is given up is shrinking; what is kept is hypothesis's choice of
inputs (boundary sizes, empty and extreme values), which a seeded ``random`` would not make.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dispytch.serialization import JSON_CONTENT_TYPE, JsonSerializer
from dispytch.testing.events import Placed, placed
from dispytch.transport import HEADER_CONTENT_TYPE, HEADER_EVENT_TYPE

T = TypeVar("T")

#: A content type no serializer serves.
UNSERVED_CONTENT_TYPE = b"application/x-nobody-serves"


@dataclass(frozen=True)
class RawInput:
    """One message as a plain client publishes it.

    Attributes:
        payload: The body, any bytes.
        headers: Header values as bytes, not necessarily UTF-8.
        label: What kind of input this is, for failure messages.
    """

    payload: bytes
    headers: Mapping[str, bytes] = field(default_factory=dict)
    label: str = ""

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 60 else self.payload[:60] + b"..."
        return (
            f"RawInput({self.label}: {len(self.payload)} bytes {shown!r}, {dict(self.headers)!r})"
        )


def expected_event(
    raw: RawInput,
    model: type[T] = Placed,  # type: ignore[assignment]
    *,
    undecodable_headers: Literal["replace", "reject"] = "replace",
) -> T | None:
    """The event of type ``model`` that a correct consumer hands to a handler of it, or
    ``None`` when the failure policy must take the message (logged, rejected).

    Decides as the dispatcher does: the content type header (decoded like every broker
    header, invalid UTF-8 replaced) must be absent or JSON's, and the payload must validate
    through the JSON serializer. With ``undecodable_headers="reject"`` (a transport that
    cannot carry header values that are not UTF-8, see
    :attr:`~dispytch.testing.TransportHarness.undecodable_headers`) any such value makes
    the message invalid. The generators never set an event-type header other than
    ``model``'s own, so "no handler takes this event type" does not arise here.
    """
    if undecodable_headers == "reject":
        for value in raw.headers.values():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    content_type = raw.headers.get(HEADER_CONTENT_TYPE)
    if content_type is not None and content_type.decode("utf-8", "replace") not in (
        "",
        JSON_CONTENT_TYPE,
    ):
        return None
    event_type = raw.headers.get(HEADER_EVENT_TYPE)
    declared = getattr(model, "__event_type__", None)
    if event_type is not None and event_type.decode("utf-8", "replace") != declared:
        raise ValueError(f"{raw!r} names another event type: the oracle does not judge that")
    try:
        return JsonSerializer().decoder(model)(raw.payload)
    except Exception:
        return None


def _valid_payload(i: int) -> bytes:
    return placed(i).model_dump_json().encode()


_TEMPLATE = _valid_payload(424242)
_FIELDS = sorted(json.loads(_TEMPLATE))

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _with_field(pair: tuple[str, Any]) -> bytes:
    name, value = pair
    body = json.loads(_TEMPLATE)
    body[name] = value
    return json.dumps(body).encode()


_payloads = st.one_of(
    st.binary(max_size=512).map(lambda b: (b, "random bytes")),
    st.integers(0, len(_TEMPLATE) - 1).map(lambda k: (_TEMPLATE[:k], "truncated JSON")),
    _json_values.map(lambda v: (json.dumps(v).encode(), "wrong-shaped JSON")),
    st.tuples(st.sampled_from(_FIELDS), _json_values).map(
        lambda p: (_with_field(p), f"field {p[0]!r} replaced")
    ),
    st.binary(max_size=32).map(
        lambda b: (b'{"order_id": 1, "user": "\xff' + b + b'"}', "JSON text not UTF-8")
    ),
    st.integers(0, 10**6).map(lambda i: (_valid_payload(i), "valid event")),
)

_header_names = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=24
).filter(lambda n: not n.lower().startswith("dispytch-"))

_content_types = st.one_of(
    st.none(),
    st.sampled_from([JSON_CONTENT_TYPE.encode(), UNSERVED_CONTENT_TYPE, b"text/plain"]),
    # Never valid UTF-8, so never a name a serializer could be registered under.
    st.binary(max_size=16).map(lambda b: b"\xff" + b),
)


@st.composite
def raw_inputs(draw: st.DrawFn) -> RawInput:
    """A hypothesis strategy for one hostile (or, sometimes, valid) raw message."""
    payload, label = draw(_payloads)
    headers = dict(draw(st.dictionaries(_header_names, st.binary(max_size=64), max_size=4)))
    content_type = draw(_content_types)
    if content_type is not None:
        headers[HEADER_CONTENT_TYPE] = content_type
    if draw(st.booleans()):
        headers[HEADER_EVENT_TYPE] = b"order_placed"
    return RawInput(payload, headers, label)


def hostile_inputs(count: int) -> list[RawInput]:
    """Up to ``count`` raw messages drawn by :func:`raw_inputs`, the same on every run.

    See the module docstring for why they are collected rather than given to the test.
    """
    found: list[RawInput] = []

    @settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(raw_inputs())
    def collect(raw: RawInput) -> None:
        found.append(raw)

    collect()
    return found


def named_inputs(large: int = 1_000_000) -> list[RawInput]:
    """The cases named in the transport issue, each published by every transport.

    Args:
        large: The size of the large payload (1 MB by default: below Kafka's default
            message size limit, so it reaches the consumer on every broker).
    """
    head = b'{"order_id": 1, "user": "'
    return [
        RawInput(b"", {}, "empty payload"),
        RawInput(head + b"x" * (large - len(head)), {}, f"{large}-byte unterminated JSON"),
        RawInput(
            _valid_payload(900_001),
            {"x-garbage": b"\xff\xfe\x00\x80garbage\xc3", HEADER_EVENT_TYPE: b"order_placed"},
            "valid event with a header of garbage bytes",
        ),
        RawInput(
            _valid_payload(900_002),
            {HEADER_CONTENT_TYPE: UNSERVED_CONTENT_TYPE},
            "valid JSON under a content type nobody serves",
        ),
        RawInput(
            _valid_payload(900_003),
            {HEADER_CONTENT_TYPE: b"\xff\xfeapplication/json"},
            "content type that is not UTF-8",
        ),
    ]
