"""Lifecycle notification: telling observer plugins that a dispatcher or emitter started
or stopped.

Each observer is called through pluggy on its own (:func:`~dispytch.plugins.loading.call_each`),
so hook wrappers run and ``DISPYTCH_TRACE_HOOKS`` shows the call, while an observer that
raises is logged with its plugin's name and never affects the caller or the other
observers.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from dispytch.errors import PluginError
from dispytch.plugins import hints
from dispytch.plugins.loading import LIFECYCLE_HOOKS, call_each, get_state

log = logging.getLogger("dispytch.plugins")


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook on every plugin that implements it.

    Each implementation is called on its own: an observer that raises is logged with
    its plugin's name and never affects the caller or the other observers. Hook
    implementations are synchronous; one that returns an awaitable is told so in the log
    (schedule your own task from the hook instead).

    Args:
        hook_name: One of the lifecycle hooks, e.g. ``"dispytch_dispatcher_started"``.
        **kwargs: The hook's arguments (``dispatcher=...`` or ``emitter=...``).

    Raises:
        PluginError: When ``hook_name`` is not a lifecycle hook (a programming error).
    """
    if hook_name not in LIFECYCLE_HOOKS:
        raise PluginError(hints.not_a_lifecycle_hook(hook_name, LIFECYCLE_HOOKS))
    for impl, result in call_each(get_state().pm, hook_name, kwargs):
        if isinstance(result, Exception):
            log.error(
                "Plugin %r failed in its %s hook: %s: %s",
                impl.plugin_name,
                hook_name,
                type(result).__name__,
                result,
                exc_info=result,
            )
            continue
        for value in result:
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()
                log.error("%s", hints.awaitable_hook(impl.plugin_name, hook_name))
