"""The conformance suite as a pytest module, for ``pytest -p dispytch_pytest
--dispytch-conformance=URL``: every case against the transport serving ``URL``.

The harness is :class:`UrlHarness`, built from the plugin registry alone (the way
``EventEmitter.from_url``/``EventDispatcher.from_url`` build clients), or the transport's
own harness class named by ``--dispytch-harness=module:Class`` (called with the URL) for
what a generic harness cannot know: publishing with the broker's plain client, where
rejected messages go. Cases that need those are skipped, each skip saying why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispytch.cli import import_from_string
from dispytch.errors import ConfigError
from dispytch.plugins import transport_for_url
from dispytch.routes import EventRoute, TopicRoute
from dispytch.testing.conformance import TransportConformance
from dispytch.testing.harness import TransportHarness
from dispytch.transport import Consumer, Producer, capabilities_of

#: Consumer options transports use for the consumer group, tried in this order.
GROUP_OPTIONS = ("group", "group_id")


class UrlHarness(TransportHarness):
    """A harness for any installed transport, from its URL and the plugin registry.

    Routes are the transport-neutral :class:`~dispytch.TopicRoute` every transport
    accepts; producers and consumers come from the transport's factories, the consumer
    group passed as the first of :data:`GROUP_OPTIONS` the factory takes.
    """

    mode = "url"

    def __init__(self, url: str) -> None:
        self.url = url
        self.spec = transport_for_url(url)
        self.name = self.spec.name
        self._group_option: str | None = None
        fields = getattr(self.spec.options_model, "model_fields", {})
        for option in GROUP_OPTIONS:
            if option in fields:
                self._group_option = option
                break
        # What a consumer built from this URL declares (the spec says what the
        # transport offers at most: an unordered consumer has no ordered lanes).
        # Built, never started: it holds no connection.
        self.capabilities = capabilities_of(self.consumer(group="dispytch-conformance-probe"))
        self.at_least_once = self.capabilities.delivery == "at-least-once"

    def route(self, name: str) -> EventRoute:
        return TopicRoute(topic=name)

    def producer(self) -> Producer:
        return self.spec.producer_factory(self.url)

    def consumer(self, *, group: str) -> Consumer:
        options = (self._group_option,) if self._group_option else GROUP_OPTIONS
        errors: list[str] = []
        for option in options:
            try:
                consumer = self.spec.consumer_factory(self.url, **{option: group})
            except (TypeError, ConfigError) as exc:
                errors.append(f"{option}=: {exc}")
                continue
            self._group_option = option
            return consumer
        raise ConfigError(
            f"The {self.name} consumer factory takes none of {', '.join(GROUP_OPTIONS)} for "
            f"its consumer group ({'; '.join(errors)}).\n"
            "Give the transport's own harness with --dispytch-harness=module:Class."
        )


def _harness_class(config: pytest.Config) -> Any:
    named = config.getoption("dispytch_harness")
    if not named:
        return UrlHarness
    cls = import_from_string(named)
    if not (isinstance(cls, type) and issubclass(cls, TransportHarness)):
        raise pytest.UsageError(f"--dispytch-harness={named} is not a TransportHarness class.")
    return cls


class TestTransportConformance(TransportConformance):
    """Every conformance case against ``--dispytch-conformance=URL``."""

    @pytest.fixture
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[TransportHarness]:
        url = request.config.getoption("dispytch_conformance")
        if not url:
            pytest.skip("run with pytest -p dispytch_pytest --dispytch-conformance=URL")
        h: TransportHarness = _harness_class(request.config)(url)
        try:
            yield h
        finally:
            await h.cleanup()
