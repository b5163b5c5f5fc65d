"""Every message the plugin host shows a user: what to install, did-you-mean, conflicts.

Kept apart from the tables and the loader so that the wording can be read, reviewed and
tested in one place. The functions here are pure: they take what they describe (the
installed names, the failures, where each plugin came from) and return text, one line
for the cause and one for what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

#: The first-party distribution serving each well-known scheme, so that a missing one can
#: say what to install.
KNOWN_SCHEMES: dict[str, str] = {
    "kafka": "dispytch-kafka",
    "amqp": "dispytch-rabbitmq",
    "amqps": "dispytch-rabbitmq",
    "redis": "dispytch-redis",
    "rediss": "dispytch-redis",
    "redis+streams": "dispytch-redis",
    "rediss+streams": "dispytch-redis",
}

#: Names people reach for that are not URL schemes, and the scheme they mean.
SCHEME_ALIASES: dict[str, str] = {"rabbitmq": "amqp", "rabbit": "amqp", "mem": "memory"}

#: What to do about any conflict between two plugins.
CONFLICT_FIX = "Uninstall one of them, or load only one with DISPYTCH_PLUGINS."


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (a likely typo), or ``None``."""
    found = difflib.get_close_matches(name, list(candidates), n=1)
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    close = closest(name, candidates)
    return f" Did you mean {close!r}?" if close else ""


def unknown_hooks(names: Sequence[str], known: Iterable[str]) -> str:
    """Why a plugin implementing hooks no spec declares is not loaded."""
    known = list(known)
    hints = []
    for name in names:
        close = closest(name, known)
        hints.append(f"{name!r}" + (f" (did you mean {close!r}?)" if close else ""))
    return f"it implements unknown hooks: {', '.join(hints)}"


def claimant(plugin: str, distribution: str | None, detail: str = "") -> str:
    """One side of a conflict: the plugin, its distribution when known, and a detail."""
    text = repr(plugin)
    if distribution:
        text += f" from {distribution}"
    if detail:
        text += f" ({detail})"
    return text


def conflict(subject: str, first: str, second: str) -> str:
    """Two plugins claim ``subject`` (``"URL scheme 'dup://'"``): the message naming both
    (each as :func:`claimant` writes it)."""
    return f"{subject} is claimed by two plugins: {first} and {second}.\n{CONFLICT_FIX}"


def no_scheme(url: str, known: bool) -> str:
    """A URL without ``scheme://``."""
    head = url.split(":", 1)[0].lower() if ":" in url else ""
    example = f"{head}://..." if known else "scheme://..."
    return (
        f"{url!r} has no scheme. Write it as {example}, e.g. 'memory://' or "
        "'kafka://localhost:9092'."
    )


def install_hint(
    dist: str,
    *,
    failed: str | None,
    loaded: bool,
    installed: bool,
    selection: str,
) -> str:
    """What to do so that the first-party distribution ``dist`` serves a scheme.

    Args:
        dist: The distribution that serves the scheme.
        failed: Its plugin's load error, when it is installed but failed to load.
        loaded: It is installed and loaded (so it does not serve this scheme).
        installed: It is installed at all.
        selection: The value of ``DISPYTCH_PLUGINS``.
    """
    if failed is not None:
        return (
            f"{dist} is installed but its plugin failed to load ({failed}). "
            f"Reinstall it with: pip install --force-reinstall {dist}"
        )
    if loaded:
        return f"{dist} is installed and loaded but does not serve this scheme; upgrade it."
    if installed:
        return (
            f"{dist} is installed but not loaded: DISPYTCH_PLUGINS={selection!r} leaves it "
            "out. Add its plugin name or unset DISPYTCH_PLUGINS."
        )
    return f"Install it with: pip install {dist}"


def transport_not_found(
    scheme: str,
    installed: Sequence[str],
    *,
    hint_for: Mapping[str, str],
    failures: Sequence[tuple[str | None, str]],
) -> str:
    """No transport serves ``scheme``: say what to install, or the scheme meant.

    Args:
        scheme: The scheme looked up.
        installed: The schemes that are served.
        hint_for: For first-party distributions, what :func:`install_hint` says.
        failures: ``(distribution, text)`` of every plugin that failed to load.
    """
    first = f"No transport serves {scheme + '://'!r}."
    lines: list[str] = []
    dist = KNOWN_SCHEMES.get(scheme)
    suggestion: str | None = None
    if dist is None:
        suggestion = SCHEME_ALIASES.get(scheme) or closest(scheme, [*installed, *KNOWN_SCHEMES])
        if suggestion is not None:
            first += f" Did you mean {suggestion + '://'!r}?"
            if suggestion not in installed:
                dist = KNOWN_SCHEMES.get(suggestion)
    first += f" Installed: {', '.join(installed) or 'none'}."
    if dist is not None:
        lines.append(hint_for.get(dist) or f"Install it with: pip install {dist}")
    elif suggestion is None:
        lines.append(
            "If a third-party plugin serves it, install that distribution and check "
            "`dispytch plugins`."
        )
    others = [text for failed_dist, text in failures if dist is None or failed_dist != dist]
    if others:
        lines.append("Other plugins failed to load:")
        lines.extend(f"  {text}" for text in others)
    return "\n".join([first, *lines])


def serializer_not_found(name: str, keys: Iterable[str], names: Iterable[str]) -> str:
    """No serializer is registered under ``name`` (a name or content type)."""
    known = sorted(set(names))
    return (
        f"No serializer is registered as {name!r}.{did_you_mean(name, keys)} "
        f"Known: {', '.join(known) or 'none'}.\n"
        "A serializer comes from a plugin: install the distribution that provides it "
        "and check `dispytch plugins`."
    )


def middleware_not_found(name: str, names: Iterable[str]) -> str:
    """No middleware is registered under ``name``."""
    known = sorted(names)
    return (
        f"No middleware is registered as {name!r}.{did_you_mean(name, known)} "
        f"Known: {', '.join(known) or 'none'}.\n"
        "Named middleware comes from plugins: install the distribution that provides "
        "it and check `dispytch plugins`."
    )


def not_a_lifecycle_hook(name: str, hooks: Iterable[str]) -> str:
    """``notify`` was given a hook that is not a lifecycle hook (a programming error)."""
    return f"{name!r} is not a lifecycle hook; use one of {', '.join(hooks)}."


def awaitable_hook(plugin: str, hook: str) -> str:
    """A lifecycle hook returned an awaitable, which is never awaited."""
    return (
        f"Plugin {plugin!r}: {hook} returned an awaitable, which Dispytch does not await. "
        "Make the hook a plain function and start your own task from it "
        "(asyncio.get_running_loop().create_task(...))."
    )
