"""``kafka://`` URLs and aiokafka options (no aiokafka import at module level)."""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dispytch.errors import DispytchError


class KafkaConfigError(DispytchError, ValueError):
    """A Kafka producer or consumer was configured in a way Dispytch cannot honour."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_kafka_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``kafka://[user:password@]host:port[,host2:port2][?option=value&...]``.

    Returns:
        ``(bootstrap_servers, options)``: the comma-separated servers and the query
        options as text (user info becomes SASL PLAIN credentials).

    Raises:
        KafkaConfigError: When the URL is not ``kafka://`` or names no server.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka":
        raise KafkaConfigError(
            f"{url!r} is not a Kafka URL. Write it as kafka://host:9092[,host2:9092]?options."
        )
    netloc = parts.netloc
    options: dict[str, str] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        options["sasl_plain_username"] = unquote(user)
        options["sasl_plain_password"] = unquote(password)
        options["sasl_mechanism"] = "PLAIN"
        options["security_protocol"] = "SASL_PLAINTEXT"
    servers = [s.strip() for s in netloc.split(",") if s.strip()]
    if not servers:
        raise KafkaConfigError(
            f"{url!r} names no Kafka server. Write it as kafka://host:9092[,host2:9092]."
        )
    servers = [s if ":" in s.rsplit("]", 1)[-1] else f"{s}:9092" for s in servers]
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        options[key] = value
    return ",".join(servers), options


def coerce_options(
    client: type, options: dict[str, Any], *, ours: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Convert text options (from a URL) to the types ``client``'s constructor expects.

    Values that are not text (an ``ssl_context``, a callable) pass through unchanged,
    which is how TLS and SASL settings reach aiokafka.

    Raises:
        KafkaConfigError: On an option the client does not know, or a value of the
            wrong form.
    """
    params = inspect.signature(client).parameters
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ours:
            out[key] = value
            continue
        param = params.get(key)
        if param is None or key in ("self", "loop"):
            known = ", ".join(sorted(k for k in params if k not in ("self", "loop", "args")))
            raise KafkaConfigError(
                f"{client.__name__} has no option {key!r}. Known options: {known}."
            )
        default = param.default
        if isinstance(value, str) and not isinstance(default, str) and default is not None:
            out[key] = _convert(key, value, default)
        else:
            out[key] = value
    return out


def _convert(key: str, value: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise KafkaConfigError(
            f"Kafka option {key}={value!r} should be a {type(default).__name__} "
            f"(default {default!r})."
        ) from None
    return value


def ensure_ssl_context(options: dict[str, Any]) -> None:
    """Give TLS protocols a default SSL context (system CAs) when none was passed."""
    protocol = str(options.get("security_protocol", "PLAINTEXT")).upper()
    if protocol in ("SSL", "SASL_SSL") and options.get("ssl_context") is None:
        from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

        options["ssl_context"] = create_ssl_context()


def parse_bool(key: str, value: Any) -> bool:
    """A boolean option that may arrive as text from a URL."""
    if isinstance(value, bool):
        return value
    low = str(value).lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise KafkaConfigError(f"Kafka option {key}={value!r} should be true or false.")


def drop_other_side(
    url_options: dict[str, str], this: type, other: type, other_own: frozenset[str]
) -> None:
    """Remove URL options meant for the other side (``?group_id=`` in a producer's URL).

    One ``kafka://`` URL can then configure both an emitter and a dispatcher. Only options
    the other client (or Dispytch's wrapper of it) knows and this one does not are
    dropped: a typo still fails loudly in :func:`coerce_options`.
    """
    mine = inspect.signature(this).parameters
    theirs = inspect.signature(other).parameters
    for key in list(url_options):
        if key not in mine and (key in theirs or key in other_own):
            del url_options[key]
