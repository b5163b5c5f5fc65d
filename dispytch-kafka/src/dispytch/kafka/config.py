"""``kafka://`` URLs and the Kafka options model (no aiokafka import at module level).

One model, :class:`KafkaOptions`, holds every option a Kafka producer or consumer takes,
typed and documented, whether it arrives in a URL's query string
(``kafka://host:9092?group_id=billing&max_records=50``) or as a keyword argument
(``KafkaConsumer.from_url(url, group_id="billing")``). Each option belongs to a side
(the consumer, the producer, or the aiokafka client of both), so one URL can configure an
emitter and a dispatcher alike: each side takes its own options and leaves the others'.
A typo is an error naming the closest known option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from dispytch.errors import ConfigError
from dispytch.options import TransportOptions
from dispytch.transport import Capabilities
from pydantic import ConfigDict, Field

#: Records a consumer takes from aiokafka per poll when neither ``max_records`` nor the
#: dispatcher's ``max_in_flight`` says otherwise. On the benchmark (one partition, 20,000
#: records) polls of 50 to 200 records finished the run about 6% sooner than taking the
#: whole buffer (thousands of records) at once.
DEFAULT_MAX_RECORDS = 100

#: Default size of the record batches an owned producer packs (bytes), passed to
#: ``AIOKafkaProducer(max_batch_size=...)``. aiokafka sends one batch per partition per
#: produce request and keeps one request in flight per broker, so a partition's rate is
#: bound by batch size / round trip: with aiokafka's 16 KiB default (about 40 of the
#: benchmark's events with their headers) publishing 20,000 events took 1,060 requests.
#: Well below Kafka's default ``message.max.bytes`` (1 MiB).
DEFAULT_BATCH_BYTES = 256 * 1024


#: What a Kafka consumer offers. Lease extension: a record is redelivered elsewhere only
#: after this member loses its partition, which aiokafka causes when ``getmany`` is not
#: called for ``max_poll_interval_ms``; the consumer keeps polling (every partition paused)
#: while handlers are slow or the dispatcher holds back. No delayed requeue (Kafka cannot
#: delay one record of a partition without its successors).
CAPABILITIES = Capabilities(
    delivery="at-least-once",
    ordered_lanes=True,
    requeue=True,
    delayed_requeue=False,
    pause_lanes=True,
    lease_extension=True,
    request_reply=True,
)


class KafkaConfigError(ConfigError):
    """A Kafka producer or consumer was configured in a way Dispytch cannot honour."""


Side = Literal["consumer", "producer", "both", "client", "consumer-client", "producer-client"]

#: Default ``close_timeout`` of a consumer: the dispatcher's ``stop(timeout)`` plus this
#: bounds a stop while the broker is down.
CONSUMER_CLOSE_TIMEOUT = 1.0
#: Default ``close_timeout`` of an owned producer (flushing what is pending).
PRODUCER_CLOSE_TIMEOUT = 5.0


def _opt(default: Any, side: Side, description: str, **kw: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"side": side}, **kw)


class KafkaOptions(TransportOptions):
    """Every option of the Kafka transport, from a URL query or keyword arguments.

    Sides: ``consumer`` and ``producer`` options configure Dispytch's own classes
    (``both``: either);
    ``client`` options are handed to the ``AIOKafkaConsumer``/``AIOKafkaProducer`` that
    ``from_url`` builds (``consumer-client`` and ``producer-client`` to one of them only).
    An option left unset keeps aiokafka's default. A client you build yourself keeps its
    own settings: client options are for ``from_url`` only.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # -- Dispytch's consumer -----------------------------------------------------------
    group_id: str | None = _opt(
        None,
        "consumer",
        "The consumer group (also from KafkaEventSubscription(group_id=...)).",
    )
    ordered: bool = _opt(
        True,
        "consumer",
        "Handle one partition's records in offset order (partitions concurrently); "
        "false lets one partition's records run concurrently too (commits stay correct).",
    )
    revoke_timeout: float = _opt(
        10.0,
        "consumer",
        "On a rebalance, seconds to wait for in-flight records of revoked partitions "
        "before committing what finished (keep it below rebalance_timeout_ms).",
        gt=0,
    )
    commit_interval: float = _opt(
        0.5, "consumer", "Minimum seconds between two periodic commits.", ge=0
    )
    poll_timeout: float = _opt(
        1.0, "consumer", "Longest wait of one idle fetch, in seconds (stop interrupts it).", gt=0
    )
    max_records: int | None = _opt(
        None,
        "consumer",
        "Records taken from aiokafka per poll. Unset: the dispatcher's max_in_flight, at "
        f"most {DEFAULT_MAX_RECORDS} (what a poll takes is what waits in memory).",
        ge=1,
    )
    close_timeout: float | None = _opt(
        None,
        "both",
        "Longest wait, in seconds, of close/stop: a consumer's final commit and "
        f"disconnect (default {CONSUMER_CLOSE_TIMEOUT}), an owned producer's flush and "
        f"disconnect (default {PRODUCER_CLOSE_TIMEOUT}); a broker that is down must not "
        "hang a stop (what is left finishes or fails in the background).",
        gt=0,
    )
    # -- Dispytch's producer -----------------------------------------------------------
    reply_topic: str = _opt(
        "dispytch.replies",
        "producer",
        "Request/reply: the topic replies come back on; each producer reads one of its "
        "partitions (created with reply_partitions partitions when missing).",
        min_length=1,
    )
    reply_partitions: int = _opt(
        16,
        "producer",
        "Request/reply: partitions of reply_topic when the producer creates it (producers "
        "sharing a partition read, and drop, each other's replies).",
        ge=1,
    )
    delivery_timeout: float | None = _opt(
        None,
        "producer",
        "Seconds to wait for the broker to confirm one send (and a whole send_batch) "
        "before EmitTimeoutError; unset relies on request_timeout_ms alone.",
        gt=0,
    )
    batch_bytes: int | None = _opt(
        None,
        "producer",
        "Largest record batch per partition of an owned producer (its max_batch_size; "
        f"default {DEFAULT_BATCH_BYTES}). Keep it below the topic's max.message.bytes.",
        ge=1024,
    )
    # -- both aiokafka clients ---------------------------------------------------------
    client_id: str | None = _opt(None, "client", "Client name in broker logs.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = _opt(
        None, "client", "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    ssl_context: Any = _opt(
        None, "client", "An ssl.SSLContext (TLS protocols get the system CAs by default)."
    )
    sasl_mechanism: str | None = _opt(
        None, "client", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER."
    )
    sasl_plain_username: str | None = _opt(None, "client", "SASL user (URL user info).")
    sasl_plain_password: str | None = _opt(None, "client", "SASL password (URL user info).")
    sasl_kerberos_service_name: str | None = _opt(None, "client", "Kerberos service name.")
    sasl_kerberos_domain_name: str | None = _opt(None, "client", "Kerberos domain name.")
    sasl_oauth_token_provider: Any = _opt(None, "client", "An aiokafka token provider.")
    request_timeout_ms: int | None = _opt(None, "client", "Broker request timeout.", ge=1)
    retry_backoff_ms: int | None = _opt(None, "client", "Wait between retries.", ge=0)
    metadata_max_age_ms: int | None = _opt(None, "client", "Metadata refresh period.", ge=0)
    connections_max_idle_ms: int | None = _opt(None, "client", "Idle connection close.", ge=0)
    api_version: str | None = _opt(None, "client", "Kafka API version (default: detected).")
    # -- the producer's aiokafka client ------------------------------------------------
    acks: Literal["all"] | Annotated[int, Field(ge=-1, le=1)] | None = _opt(
        None, "producer-client", "Broker acknowledgements: 0, 1 or all (-1)."
    )
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = _opt(
        None, "producer-client", "Record batch compression."
    )
    max_batch_size: int | None = _opt(
        None, "producer-client", "aiokafka's batch size (batch_bytes sets it too).", ge=1
    )
    max_request_size: int | None = _opt(None, "producer-client", "Largest request.", ge=1)
    linger_ms: int | None = _opt(None, "producer-client", "Wait to fill a batch.", ge=0)
    enable_idempotence: bool | None = _opt(None, "producer-client", "Idempotent producer.")
    # -- the consumer's aiokafka client ------------------------------------------------
    auto_offset_reset: Literal["earliest", "latest", "none"] = _opt(
        "earliest",
        "consumer-client",
        "Where a new group starts: earliest (default here, so a new group does not skip "
        "events published before it joined), latest, or none.",
    )
    enable_auto_commit: Literal[False] = _opt(
        False,
        "consumer-client",
        "Always false: auto-commit would commit records before their handlers finished.",
    )
    group_instance_id: str | None = _opt(None, "consumer-client", "Static membership id.")
    fetch_max_wait_ms: int | None = _opt(None, "consumer-client", "Fetch wait.", ge=0)
    fetch_max_bytes: int | None = _opt(None, "consumer-client", "Fetch size limit.", ge=1)
    fetch_min_bytes: int | None = _opt(None, "consumer-client", "Fetch minimum.", ge=1)
    max_partition_fetch_bytes: int | None = _opt(
        None, "consumer-client", "Per-partition fetch size limit.", ge=1
    )
    max_poll_records: int | None = _opt(None, "consumer-client", "aiokafka's poll cap.", ge=1)
    max_poll_interval_ms: int | None = _opt(None, "consumer-client", "Poll deadline.", ge=1)
    session_timeout_ms: int | None = _opt(None, "consumer-client", "Group session.", ge=1)
    heartbeat_interval_ms: int | None = _opt(None, "consumer-client", "Heartbeats.", ge=1)
    rebalance_timeout_ms: int | None = _opt(None, "consumer-client", "Rebalance wait.", ge=1)
    isolation_level: Literal["read_uncommitted", "read_committed"] | None = _opt(
        None, "consumer-client", "Whether to skip aborted transactions' records."
    )
    check_crcs: bool | None = _opt(None, "consumer-client", "Check record CRCs.")
    exclude_internal_topics: bool | None = _opt(
        None, "consumer-client", "Keep internal topics out of pattern subscriptions."
    )
    client_rack: str | None = _opt(None, "consumer-client", "Rack id (fetch from followers).")

    @classmethod
    def side_of(cls, name: str) -> str:
        """The side an option belongs to (``consumer``, ``producer``, ``client``...)."""
        extra = cls.model_fields[name].json_schema_extra
        assert isinstance(extra, dict)
        return str(extra["side"])

    @classmethod
    def names_for(cls, side: Literal["consumer", "producer"]) -> frozenset[str]:
        """The options a consumer (or a producer) takes: its own and its client's."""
        wanted = {side, "both", "client", f"{side}-client"}
        return frozenset(n for n in cls.model_fields if cls.side_of(n) in wanted)

    def client_kwargs(self, side: Literal["consumer", "producer"]) -> dict[str, Any]:
        """Keyword arguments for the aiokafka client of ``side`` (only options set)."""
        wanted = {"client", f"{side}-client"}
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            if self.side_of(name) not in wanted:
                continue
            value = getattr(self, name)
            # Unset options keep aiokafka's defaults; the consumer's client always gets
            # Dispytch's (auto_offset_reset="earliest", enable_auto_commit=False).
            if value is not None and (name in self.model_fields_set or side == "consumer"):
                out[name] = value
        return out

    def client_options_set(self) -> list[str]:
        """Client options given explicitly (meaningless for a client the user built)."""
        return sorted(n for n in self.model_fields_set if "client" in self.side_of(n))


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


def options_from_url(
    url: str, side: Literal["consumer", "producer"], kwargs: dict[str, Any]
) -> tuple[str, KafkaOptions]:
    """Servers and validated options of one side from a URL plus keyword arguments.

    The other side's options in the URL are left out (one URL may configure an emitter
    and a dispatcher); in keyword arguments they are an error.

    Raises:
        KafkaConfigError: A bad URL. ConfigError: an unknown or invalid option.
    """
    servers, query = parse_kafka_url(url)
    other = frozenset(KafkaOptions.model_fields) - KafkaOptions.names_for(side)
    for key in kwargs:
        if key in other:
            raise KafkaConfigError(
                f"{key!r} is not an option of the Kafka {side} (it configures the "
                f"{'producer' if side == 'consumer' else 'consumer'}). Remove it."
            )
    if kwargs.get("enable_auto_commit") or query.get("enable_auto_commit", "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    ):
        raise KafkaConfigError(
            "enable_auto_commit=True would commit offsets of records before their "
            "handlers finished. Dispytch commits after handling: leave it off."
        )
    query.pop("enable_auto_commit", None)
    kwargs = {k: v for k, v in kwargs.items() if k != "enable_auto_commit"}
    return servers, KafkaOptions.parse(query, ignore=other, **kwargs)


def ensure_ssl_context(options: dict[str, Any]) -> None:
    """Give TLS protocols a default SSL context (system CAs) when none was passed."""
    protocol = str(options.get("security_protocol", "PLAINTEXT")).upper()
    if protocol in ("SSL", "SASL_SSL") and options.get("ssl_context") is None:
        from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

        options["ssl_context"] = create_ssl_context()
