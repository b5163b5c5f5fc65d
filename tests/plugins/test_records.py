"""Records validate themselves where the plugin author builds them."""

from __future__ import annotations

import pytest
from dispytch.plugins import MiddlewareSpec, PluginInfo, SerializerSpec, TransportSpec
from dispytch.serialization import JsonSerializer
from dispytch.transport import DEFAULT_CAPABILITIES


def _make(url, **options):
    return None


def test_transport_spec_normalises_schemes_and_types():
    spec = TransportSpec(
        name="x",
        schemes=["x", "x+tls"],
        producer_factory=_make,
        consumer_factory=_make,
        route_types=[int],
    )
    assert spec.schemes == ("x", "x+tls")
    assert spec.route_types == (int,)
    assert hash(spec)  # stays hashable
    single = TransportSpec(name="y", schemes="y", producer_factory=_make, consumer_factory=_make)
    assert single.schemes == ("y",)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": ""}, ValueError, r"A transport needs a non-empty name, got ''\."),
        ({"schemes": ()}, ValueError, r"Transport 'x' must serve at least one URL scheme\."),
        (
            {"schemes": ("Kafka://",)},
            ValueError,
            r"Transport 'x' declares the scheme 'Kafka://'; write it in lower case without "
            r"'://', e\.g\. 'kafka' or 'redis\+streams'\.",
        ),
        (
            {"producer_factory": "nope"},
            TypeError,
            r"Transport 'x': producer_factory must be a callable \(url, \*\*options\)\.",
        ),
    ],
)
def test_transport_spec_rejects_malformed_records(kwargs, error, message):
    fields = {
        "name": "x",
        "schemes": ("x",),
        "producer_factory": _make,
        "consumer_factory": _make,
        **kwargs,
    }
    with pytest.raises(error, match=message):
        TransportSpec(**fields)


def test_serializer_spec_needs_a_mime_type_and_a_factory():
    with pytest.raises(
        ValueError,
        match=r"Serializer 'cbor' needs a MIME content type such "
        r"as 'application/cbor', got 'cbor'\.",
    ):
        SerializerSpec(name="cbor", content_type="cbor", factory=JsonSerializer)
    with pytest.raises(TypeError, match=r"Serializer 'cbor': factory must be a callable"):
        SerializerSpec(name="cbor", content_type="application/cbor", factory=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"A serializer needs a non-empty name"):
        SerializerSpec(name=" ", content_type="application/cbor", factory=JsonSerializer)


def test_middleware_spec_needs_a_name_and_a_factory():
    with pytest.raises(ValueError, match=r"A middleware needs a non-empty name, got None\."):
        MiddlewareSpec(name=None, factory=_make)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Middleware 'audit': factory must be a callable"):
        MiddlewareSpec(name="audit", factory=42)  # type: ignore[arg-type]


def test_plugin_info_to_dict():
    info = PluginInfo(
        name="p",
        distribution="d",
        version="1",
        entry_point="m",
        transports=(
            TransportSpec(
                name="x",
                schemes=("x",),
                producer_factory=_make,
                consumer_factory=_make,
                description="dx",
            ),
        ),
        serializers=(SerializerSpec(name="s", content_type="a/b", factory=JsonSerializer),),
        middlewares=(MiddlewareSpec(name="m", factory=_make, description="dm"),),
        hooks=("dispytch_transports",),
    )
    assert info.to_dict() == {
        "name": "p",
        "distribution": "d",
        "version": "1",
        "entry_point": "m",
        "hooks": ["dispytch_transports"],
        "transports": [
            {
                "name": "x",
                "schemes": ["x"],
                "description": "dx",
                "capabilities": DEFAULT_CAPABILITIES.to_dict(),
                "options": [],
            }
        ],
        "serializers": [{"name": "s", "content_type": "a/b", "description": ""}],
        "middlewares": [{"name": "m", "description": "dm"}],
    }
