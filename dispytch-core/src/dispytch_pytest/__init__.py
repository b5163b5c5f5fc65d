"""Dispytch's pytest plugin: the testing kit as fixtures, a marker, and the conformance run.

Opt in, per run or per project (it is never loaded on its own: core declares no
``pytest11`` entry point, so installing Dispytch changes nobody's test runs)::

    pytest -p dispytch_pytest
    # or, in conftest.py:
    pytest_plugins = ["dispytch_pytest"]

It lives outside the ``dispytch`` package so that loading it costs almost nothing:
``import dispytch`` imports pydantic and the whole core, which happens only when a
fixture is used (or the conformance run is asked for). No broker library is imported.

Fixtures:
    ``dispytch_memory``: a factory, ``async with dispytch_memory(emitter, dispatcher) as
    kit:`` (:func:`dispytch.testing.memory` with the marker's options).
    ``dispytch_kit``: the entered kit over the service's clients, which your own
    ``dispytch_targets`` fixture returns (needs pytest-asyncio).
    ``dispytch_clock``: a :class:`~dispytch.testing.VirtualClock` driving the test's loop.

Marker: ``@pytest.mark.dispytch(clock=True, ordered=False, start=True)``.

Options: ``--dispytch-conformance=URL`` runs the transport conformance suite against any
installed transport instead of the collected tests; ``--dispytch-harness=module:Class``
uses the transport's own harness (constructed with the URL) instead of the generic one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dispytch.testing.clock import VirtualClock
    from dispytch.testing.kit import Kit

try:  # loaded already by pytest when installed; only its decorator is used here
    import pytest_asyncio

    _async_fixture: Any = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    _async_fixture = None

_MARKER_OPTIONS = ("clock", "ordered", "start")
_SUITE = "dispytch.testing.conformance_suite"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dispytch")
    group.addoption(
        "--dispytch-conformance",
        metavar="URL",
        default=None,
        help="run Dispytch's transport conformance suite against URL (any installed "
        "transport) instead of the collected tests",
    )
    group.addoption(
        "--dispytch-harness",
        metavar="MODULE:CLASS",
        default=None,
        help="with --dispytch-conformance: the transport's own TransportHarness class, "
        "called with the URL (default: a generic harness built from the plugin registry)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dispytch(clock=True, ordered=False, start=True): options of the dispytch_kit and "
        "dispytch_memory fixtures (see dispytch.testing.memory)",
    )
    url = config.getoption("dispytch_conformance")
    if not url:
        return
    spec = importlib.util.find_spec(_SUITE)
    if spec is None or spec.origin is None:  # pragma: no cover - a broken install
        raise pytest.UsageError(f"{_SUITE} is missing; reinstall dispytch-core.")
    # Collect the suite instead of the paths given (or the project's testpaths).
    config.args[:] = [spec.origin]
    if hasattr(config.option, "asyncio_mode"):
        config.option.asyncio_mode = "auto"  # the suite's cases are plain async tests


def _marker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("dispytch")
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError("@pytest.mark.dispytch takes keyword arguments only.")
    unknown = sorted(set(marker.kwargs) - set(_MARKER_OPTIONS))
    if unknown:
        raise pytest.UsageError(
            f"@pytest.mark.dispytch got unknown option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_MARKER_OPTIONS)}."
        )
    return dict(marker.kwargs)


@pytest.fixture
def dispytch_memory(request: pytest.FixtureRequest) -> Callable[..., Kit]:
    """``memory(...)`` with the options of the test's ``dispytch`` marker as defaults."""
    from dispytch.testing.kit import memory

    defaults = _marker_options(request)

    def make(*targets: Any, **options: Any) -> Kit:
        return memory(*targets, **{**defaults, **options})

    return make


@pytest.fixture
def dispytch_targets() -> Any:
    """Override in your conftest: the service's emitters and dispatchers for
    ``dispytch_kit``."""
    raise pytest.UsageError(
        "dispytch_kit needs your service's clients: define a fixture named "
        "dispytch_targets returning its emitters and dispatchers."
    )


if _async_fixture is not None:

    @_async_fixture  # type: ignore[untyped-decorator]
    async def dispytch_kit(
        dispytch_targets: Any, dispytch_memory: Callable[..., Kit]
    ) -> AsyncIterator[Kit]:
        """The kit over ``dispytch_targets``, entered for the test and left after it."""
        targets = dispytch_targets
        if not isinstance(targets, (list, tuple)):
            targets = [targets]
        async with dispytch_memory(*targets) as kit:
            yield kit

    @_async_fixture  # type: ignore[untyped-decorator]
    async def dispytch_clock() -> AsyncIterator[VirtualClock]:
        """A virtual clock driving the test's event loop for the whole test."""
        from dispytch.testing.clock import VirtualClock

        async with VirtualClock() as clock:
            yield clock

else:  # pragma: no cover - without pytest-asyncio

    @pytest.fixture
    def dispytch_kit() -> Iterator[Any]:
        raise pytest.UsageError("dispytch_kit needs pytest-asyncio: pip install pytest-asyncio")
        yield

    @pytest.fixture
    def dispytch_clock() -> Iterator[Any]:
        raise pytest.UsageError("dispytch_clock needs pytest-asyncio: pip install pytest-asyncio")
        yield
