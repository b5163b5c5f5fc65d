"""The transport contract's pure pieces: headers decoded only when read."""

from __future__ import annotations

import pytest
from dispytch.transport import EncodedHeaders


def test_a_lookup_decodes_the_value_asked_for() -> None:
    h = EncodedHeaders([("a", b"1"), ("b", "zwölf".encode()), ("empty", None)])
    assert h.get("b") == "zwölf"
    assert h["a"] == "1"
    assert h.get("empty") == ""
    assert h.get("missing") is None
    assert h.get("missing", "x") == "x"
    assert h.get("missing", default="y") == "y"  # as Mapping.get allows
    assert "a" in h and "missing" not in h


def test_the_last_of_repeated_names_wins() -> None:
    h = EncodedHeaders([("k", b"first"), ("k", b"second")])
    assert h.get("k") == "second"
    assert h["k"] == "second"
    assert dict(h) == {"k": "second"}
    assert len(h) == 1


def test_invalid_utf8_is_replaced_not_raised() -> None:
    h = EncodedHeaders([("k", b"ok\xff")])
    assert h["k"] == "ok\ufffd"


def test_walking_the_mapping_decodes_everything_once() -> None:
    pairs = [("a", b"1"), ("b", b"2")]
    h = EncodedHeaders(pairs)
    assert dict(h) == {"a": "1", "b": "2"}
    assert list(h) == ["a", "b"] and len(h) == 2
    assert {**h} == {"a": "1", "b": "2"}
    assert h.get("a") == "1"  # answered from the decoded dict now
    assert h == {"a": "1", "b": "2"}
    assert repr(h) == "EncodedHeaders({'a': '1', 'b': '2'})"


def test_a_missing_header_raises_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        EncodedHeaders([("a", b"1")])["nope"]
