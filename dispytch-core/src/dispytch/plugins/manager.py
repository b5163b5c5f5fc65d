"""The plugin host's facade, kept for callers that import ``dispytch.plugins.manager``.

The host is split by concern:

- :mod:`dispytch.plugins.loading`: the pluggy manager, the environment switches
  (``DISPYTCH_PLUGINS``, ``DISPYTCH_TRACE_HOOKS``), entry points with per-entry-point
  failure isolation, and :func:`~dispytch.plugins.loading.call_each`, the one way hooks
  are called (through pluggy, one plugin at a time);
- :mod:`dispytch.plugins.tables`: the typed tables (transports, serializers, middleware)
  with one conflict policy, and the data behind ``dispytch plugins``;
- :mod:`dispytch.plugins.hints`: every user-facing message (what to install,
  did-you-mean, conflicts);
- :mod:`dispytch.plugins.lifecycle`: :func:`notify`.

Nothing runs per message: the registration hooks are called once and their records
cached; the dispatch path only ever calls the plain factories those records hold.
"""

from __future__ import annotations

from dispytch.plugins.hints import KNOWN_SCHEMES, SCHEME_ALIASES
from dispytch.plugins.lifecycle import notify
from dispytch.plugins.loading import (
    ENTRY_POINT_GROUP,
    LIFECYCLE_HOOKS,
    REGISTRATION_HOOKS,
    LoadFailure,
    get_plugin_manager,
    load_failures,
    loaded,
    reset_plugins,
)
from dispytch.plugins.tables import (
    middleware_factory,
    middlewares,
    plugin_conflicts,
    plugin_infos,
    serializer_for,
    serializers,
    transport_for_url,
    transport_problems,
    transports,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_SCHEMES",
    "LIFECYCLE_HOOKS",
    "REGISTRATION_HOOKS",
    "SCHEME_ALIASES",
    "LoadFailure",
    "get_plugin_manager",
    "load_failures",
    "loaded",
    "middleware_factory",
    "middlewares",
    "notify",
    "plugin_conflicts",
    "plugin_infos",
    "reset_plugins",
    "serializer_for",
    "serializers",
    "transport_for_url",
    "transport_problems",
    "transports",
]
