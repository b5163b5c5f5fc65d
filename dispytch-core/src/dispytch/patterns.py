"""Route patterns: ``"user.{user_id}.created"``, ``"orders.*"``, ``"audit.#"``.

A pattern is split into dot-separated segments. A segment is literal text, ``*`` (exactly
one segment), ``#`` (zero or more segments, as in AMQP topic exchanges), or text holding
``{name}`` placeholders, each matching one or more characters within the segment and
captured under ``name`` for injection into handlers. Literal dots in names such as
``"user.events"`` are just separators between literal segments, so they match themselves.
"""

from __future__ import annotations

import re
from functools import cached_property

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RoutePattern:
    """A compiled route pattern.

    Args:
        pattern: The pattern text.

    Raises:
        ValueError: On a malformed pattern (an empty segment, a placeholder name used
            twice, a brace that is not part of a ``{name}`` placeholder).

    ``*`` or ``#`` mixed with other text in one segment (``"a*b"``) is literal text: only a
    whole segment is a wildcard, as in AMQP.
    """

    __slots__ = ("__dict__", "_segments", "names", "pattern")

    def __init__(self, pattern: str) -> None:
        if not pattern:
            raise ValueError("A route pattern cannot be empty.")
        self.pattern = pattern
        segments: list[tuple[str, re.Pattern[str] | None]] = []
        names: list[str] = []
        for seg in pattern.split("."):
            if "{" in seg or "}" in seg:
                rest = _PLACEHOLDER.sub("", seg)
                if "{" in rest or "}" in rest:
                    raise ValueError(
                        f"Route pattern {pattern!r} has a malformed placeholder in the "
                        f"segment {seg!r}: write {{name}} with a Python identifier as name."
                    )
            if seg in ("*", "#"):
                segments.append((seg, None))
                continue
            if ("*" in seg or "#" in seg) and "{" not in seg:
                # A literal segment that happens to contain these characters (Kafka topic
                # names cannot, RabbitMQ routing keys rarely do): keep it literal.
                segments.append((seg, None))
                continue
            found = _PLACEHOLDER.findall(seg)
            if not found:
                if seg == "":
                    raise ValueError(f"Route pattern {pattern!r} has an empty segment.")
                segments.append((seg, None))
                continue
            for name in found:
                if name in names:
                    raise ValueError(
                        f"Route pattern {pattern!r} uses the placeholder {{{name}}} twice."
                    )
                names.append(name)
            parts = _PLACEHOLDER.split(seg)
            rx = "".join(
                re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^.]+?)" for i, p in enumerate(parts)
            )
            segments.append(("{", re.compile(rx + r"\Z")))
        self._segments = tuple(segments)
        self.names: tuple[str, ...] = tuple(names)

    @cached_property
    def is_static(self) -> bool:
        """True when the pattern is plain text that only matches itself."""
        return all(kind not in ("*", "#", "{") for kind, _ in self._segments)

    def match(self, route: str) -> dict[str, str] | None:
        """Return the captured placeholders if ``route`` matches, else ``None``."""
        if self.is_static:
            return {} if route == self.pattern else None
        captured: dict[str, str] = {}
        if self._match(0, route.split("."), 0, captured):
            return captured
        return None

    def _match(self, si: int, parts: list[str], pi: int, captured: dict[str, str]) -> bool:
        segs = self._segments
        while si < len(segs):
            kind, rx = segs[si]
            if kind == "#":
                # Try every possible length for the multi-segment wildcard.
                for end in range(len(parts), pi - 1, -1):
                    trial = dict(captured)
                    if self._match(si + 1, parts, end, trial):
                        captured.update(trial)
                        return True
                return False
            if pi >= len(parts):
                return False
            part = parts[pi]
            if kind == "*":
                if not part:
                    return False
            elif rx is not None:
                m = rx.match(part)
                if m is None:
                    return False
                captured.update(m.groupdict())
            elif kind != part:
                return False
            si += 1
            pi += 1
        return pi == len(parts)

    # Translations for brokers that filter on their side -------------------------------
    @cached_property
    def regex(self) -> str:
        """An anchored regular expression matching the same routes (Kafka topic patterns)."""
        out = ""
        sep = False  # whether the next segment needs a leading "\."
        last = len(self._segments) - 1
        for i, (kind, _) in enumerate(self._segments):
            if kind == "#":
                if sep:
                    out += r"(?:\.[^.]+)*"  # "a.#": "a", "a.x", "a.x.y"
                elif i == last:
                    out += r"(?:[^.]+(?:\.[^.]+)*)?"  # "#" alone: anything
                else:
                    out += r"(?:[^.]+\.)*"  # "#.b": "b", "x.b", "x.y.b"
                continue
            if kind == "*":
                piece = r"[^.]+"
            elif kind == "{":
                piece = _PLACEHOLDER.sub(r"[^.]+", _escape_keep(self._raw(i)))
            else:
                piece = re.escape(kind)
            out += (r"\." if sep else "") + piece
            sep = True
        return "^" + out + "$"

    @cached_property
    def glob(self) -> str:
        """A glob pattern (Redis PSUBSCRIBE) that matches at least these routes."""
        out = ""
        glued = False  # a leading "#" was written: the next segment follows without "."
        for i, (kind, _) in enumerate(self._segments):
            if kind == "#":
                # "a.#" also matches "a" itself, "#.b" also matches "b": let "*" absorb
                # the dot on its side.
                glued = glued or not out
                out += "*"
                continue
            if kind == "*":
                piece = "*"
            elif kind == "{":
                piece = _PLACEHOLDER.sub("*", _glob_escape(self._raw(i)))
            else:
                piece = _glob_escape(kind)
            out += ("." if out and not glued else "") + piece
            glued = False
        return out

    @cached_property
    def amqp(self) -> str:
        """An AMQP topic-exchange binding key matching at least these routes."""
        out = []
        for i, (kind, _) in enumerate(self._segments):
            out.append("*" if kind == "{" else kind)
            if kind == "{" and _PLACEHOLDER.fullmatch(self._raw(i)) is None:
                # "user-{id}": AMQP cannot match part of a word; bind the whole word.
                out[-1] = "*"
        return ".".join(out)

    def _raw(self, index: int) -> str:
        return self.pattern.split(".")[index]

    def __repr__(self) -> str:
        return f"RoutePattern({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutePattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)


def _glob_escape(text: str) -> str:
    """Escape glob metacharacters (``[ ] ? * \\``) so they match themselves."""
    return re.sub(r"([\[\]?*\\])", r"\\\1", text)


def _escape_keep(text: str) -> str:
    """Escape regex metacharacters but keep ``{name}`` placeholders intact."""
    parts = _PLACEHOLDER.split(text)
    return "".join(re.escape(p) if i % 2 == 0 else "{" + p + "}" for i, p in enumerate(parts))
