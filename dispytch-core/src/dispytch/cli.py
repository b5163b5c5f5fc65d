"""The ``dispytch`` command: list plugins, run a dispatcher, operate durable runs.

``dispytch plugins [--json]``
    Every plugin Dispytch found (core's own included) with its distribution, version, the
    hooks it implements and what it provides, then the plugins that failed to load and any
    conflicts. ``--json`` prints the same as one JSON object, for scripts.

``dispytch run module:attribute [--app-dir DIR] [--workers N] [--reload]``
    Imports ``attribute`` from ``module`` (``DIR``, default the current directory, goes
    first on ``sys.path``). It is an :class:`~dispytch.EventDispatcher`, or a callable or
    async callable returning one (a factory, so that building it may await). The
    dispatcher is started and runs until SIGINT or SIGTERM, then stops gracefully (in-flight
    work finishes within its ``stop_timeout``) and the command exits with 0. A dispatcher
    that ended because its consumer failed (``wait()`` raised, e.g.
    :class:`~dispytch.errors.ConsumerClosedError`) exits with 1 after its stop. A second
    signal cuts the graceful stop short (exit 1), and so does a dispatcher that fails to
    start (exit 1, with the traceback). A module or attribute that cannot be found is
    reported in one line with exit code 2.

    ``--workers N`` runs N worker processes instead (each ``dispytch run`` of the same
    target, each with its own dispatcher; they share the work through the broker's
    consumer groups). The parent supervises them: a worker that dies is started again
    after a :class:`~dispytch.backoff.Backoff` delay, at most ``--max-restarts`` times in
    a row (a worker that ran ``RESTART_RESET`` seconds starts the count again); SIGINT or
    SIGTERM is forwarded to every worker for a graceful stop, and workers still running
    ``--stop-timeout`` (default 30) plus a grace period later are killed. ``--reload``
    (development) also restarts every worker gracefully when a ``.py`` file under the
    app directory changes; it needs the ``watchfiles`` library
    (``pip install 'dispytch-core[reload]'``).

``dispytch jobs list | show ID | retry ID | cancel ID [--app module:attr | --store URL] [--json]``
    Operations on durable function runs (:mod:`dispytch.durable`) in a journal store: the
    store of the Durable ``--app`` names (imported as ``run`` does; an object with a
    ``.durable``, such as ``dispytch.fastapi.Dispytch``, or a factory returning one, is
    welcome too), or the store ``--store`` names (default ``$DISPYTCH_DURABLE_STORE``,
    else the embedded default ``sqlite:///.dispytch/journal.sqlite3``). ``list`` shows
    runs newest first (``--status``, repeatable, ``--function``, ``--limit``) with the
    error of each failed one; ``show`` a run's status, attempts, arguments, outcome, lease,
    and each step and child with its result or error and traceback; ``retry`` starts a
    failed, dead or cancelled run over; ``cancel`` cancels a run that is not over and its
    unfinished children. ``retry`` and ``cancel`` send the run's message to the workers, so
    with ``--store`` they take the workers' ``--transport`` (and ``--topic``); ``retry`` is
    refused over the memory transport (it lives inside one process). ``--json`` prints one
    JSON object. A bad source (module, attribute, URL, a SQLite file that does not exist, a
    store that cannot be opened) exits with 2, a refused operation (no such run, a run that
    is not retryable, or over already) with 1.

Only the standard library's :mod:`argparse` is used: the command adds no dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import inspect
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from dispytch._version import __version__
from dispytch.backoff import Backoff
from dispytch.dispatcher import EventDispatcher
from dispytch.plugins import load_failures, plugin_conflicts, plugin_infos

log = logging.getLogger("dispytch.cli")

#: Exit code for a usage error (argparse uses it too): bad ``module:attribute``.
EXIT_USAGE = 2


class CLIError(Exception):
    """A problem the user must fix; printed in one line, exit code :data:`EXIT_USAGE`."""


# -- dispytch plugins ------------------------------------------------------------------


def _plugins_report() -> dict[str, Any]:
    return {
        "plugins": [info.to_dict() for info in plugin_infos()],
        "failures": [
            {
                "name": f.name,
                "entry_point": f.value,
                "distribution": f.distribution,
                "hook": f.hook,
                "error": f"{type(f.error).__name__}: {f.error}",
            }
            for f in load_failures()
        ],
        "conflicts": plugin_conflicts(),
        "selection": os.environ.get("DISPYTCH_PLUGINS") or None,
    }


def _print_plugins(report: dict[str, Any], out: TextIO) -> None:
    for plugin in report["plugins"]:
        dist = plugin["distribution"] or "(registered in-process)"
        version = f" {plugin['version']}" if plugin["version"] else ""
        out.write(f"{plugin['name']}: {dist}{version}\n")
        if plugin["entry_point"]:
            out.write(f"  entry point: {plugin['entry_point']}\n")
        out.write(f"  hooks: {', '.join(plugin['hooks']) or '-'}\n")
        for t in plugin["transports"]:
            schemes = ", ".join(s + "://" for s in t["schemes"])
            desc = f" - {t['description']}" if t["description"] else ""
            out.write(f"  transport {t['name']} ({schemes}){desc}\n")
        for s in plugin["serializers"]:
            desc = f" - {s['description']}" if s["description"] else ""
            out.write(f"  serializer {s['name']} ({s['content_type']}){desc}\n")
        if plugin["middlewares"]:
            names = ", ".join(m["name"] for m in plugin["middlewares"])
            out.write(f"  middlewares: {names}\n")
    if report["failures"]:
        out.write("\nFailed to load:\n")
        for f in report["failures"]:
            dist = f" (from {f['distribution']})" if f["distribution"] else ""
            where = f" in {f['hook']}" if f["hook"] else ""
            out.write(f"  {f['name']}{dist}{where}: {f['error']}\n")
    if report["conflicts"]:
        out.write("\nConflicts:\n")
        for c in report["conflicts"]:
            out.write(f"  {c}\n")
    if report["selection"]:
        out.write(
            f"\nDISPYTCH_PLUGINS={report['selection']} limits which entry points are loaded.\n"
        )


def _cmd_plugins(args: argparse.Namespace) -> int:
    # Load failures are part of the report; do not also log them as warnings.
    plugin_log = logging.getLogger("dispytch.plugins")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        report = _plugins_report()
    finally:
        plugin_log.setLevel(level)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_plugins(report, sys.stdout)
    return 0


# -- dispytch run ------------------------------------------------------------------------


def import_from_string(target: str, app_dir: str | None = None) -> Any:
    """Import ``attribute`` (dotted names allowed) from ``module`` in ``module:attribute``.

    Args:
        target: ``"package.module:attribute"``.
        app_dir: Put first on ``sys.path`` before importing (default: the current
            directory, as ``python -m`` would).

    Raises:
        CLIError: When the text is malformed, the module does not exist or lacks the
            attribute. An ``ImportError`` raised *inside* the module for another module
            is not hidden: it propagates with its traceback.
    """
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise CLIError(
            f"{target!r} is not of the form module:attribute, e.g. myapp.service:dispatcher."
        )
    path = os.path.abspath(app_dir if app_dir is not None else os.getcwd())
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise CLIError(
                f"Could not import module {module_name!r} (looked in {path} and sys.path). "
                "Check the name, or pass --app-dir with the directory that holds it."
            ) from None
        raise
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise CLIError(
                f"Module {module_name!r} has no attribute {attr_path!r}. "
                f"It has: {', '.join(public) or 'nothing public'}."
            ) from None
    return obj


def _is_dispatcher(obj: Any) -> bool:
    if isinstance(obj, EventDispatcher):
        return True
    # Anything that starts and stops like one (a wrapper of the user's) is welcome too.
    return all(
        inspect.iscoroutinefunction(getattr(obj, name, None)) for name in ("start", "stop")
    ) and not isinstance(obj, type)


async def _resolve_dispatcher(obj: Any, target: str) -> EventDispatcher:
    if not _is_dispatcher(obj):
        if not callable(obj):
            raise CLIError(
                f"{target} is a {type(obj).__name__}, not an EventDispatcher or a factory "
                "returning one."
            )
        made = obj()
        if inspect.isawaitable(made):
            made = await made
        if not _is_dispatcher(made):
            raise CLIError(
                f"{target}() returned a {type(made).__name__}; it must return an EventDispatcher."
            )
        obj = made
    return obj  # type: ignore[no-any-return]


async def _run(target: str, app_dir: str | None, stop_timeout: float | None) -> int:
    obj = import_from_string(target, app_dir)
    dispatcher = await _resolve_dispatcher(obj, target)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    forced = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.info("Received %s: stopping gracefully.", name)
            stop_requested.set()
        else:
            log.warning("Received %s again: cutting the graceful stop short.", name)
            forced.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            await dispatcher.start()
        except Exception:
            log.exception("Could not start %s.", target)
            return 1
        log.info(
            "Running %s (%s). Stop with Ctrl+C or SIGTERM.",
            target,
            getattr(dispatcher, "name", type(dispatcher).__name__),
        )
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop_requested.wait())]
        if os.environ.get(WORKER_ENV):
            waiters.append(asyncio.ensure_future(_orphaned()))
        wait_closed = getattr(dispatcher, "wait", None)
        ended: asyncio.Future[Any] | None = None
        if inspect.iscoroutinefunction(wait_closed):
            ended = asyncio.ensure_future(wait_closed())
            waiters.append(ended)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if not w.done():
                    w.cancel()
        failure: BaseException | None = None
        if ended is not None and ended.done() and not ended.cancelled():
            failure = ended.exception()
        if failure is not None:
            log.error(
                "The dispatcher stopped because its consumer failed: %s: %s",
                type(failure).__name__,
                failure,
            )
        elif not stop_requested.is_set():
            log.info("The dispatcher stopped on its own.")
        # The graceful stop runs as its own task, so that a second signal can abandon it
        # whatever it is awaiting.
        stop = dispatcher.stop() if stop_timeout is None else dispatcher.stop(timeout=stop_timeout)
        stop_task = asyncio.ensure_future(stop)
        force_task = asyncio.ensure_future(forced.wait())
        await asyncio.wait((stop_task, force_task), return_when=asyncio.FIRST_COMPLETED)
        force_task.cancel()
        if stop_task.done():
            stop_task.result()  # a failing stop propagates, with its traceback
            log.info("Stopped.")
            # 0 only for a stop that was asked for (or a consumer that simply ended).
            return 1 if failure is not None else 0
        stop_task.cancel()
        await asyncio.wait((stop_task,), timeout=1.0)
        sys.stderr.write("dispytch: stop interrupted by a second signal.\n")
        if not stop_task.done():
            # The stop did not give way to cancellation; do not let asyncio.run wait for it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


#: Environment variable telling a worker process its index (set by the supervisor).
WORKER_ENV = "DISPYTCH_WORKER"
#: A worker that ran this long before it died starts its restart count again.
RESTART_RESET = 30.0
#: Seconds the supervisor waits beyond the stop timeout before killing a worker.
KILL_GRACE = 5.0
#: The dispatcher's own default stop timeout (what workers use without --stop-timeout).
DEFAULT_STOP_TIMEOUT = 30.0


def _log_format() -> str:
    worker = os.environ.get(WORKER_ENV)
    who = f"[worker {worker} pid {os.getpid()}] " if worker else ""
    return f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"


async def _orphaned() -> None:
    """Return when this worker's supervisor is gone (the worker then stops gracefully).

    Workers run in their own session, so that a terminal's Ctrl+C reaches only the
    supervisor (which forwards one SIGTERM); this keeps a supervisor killed outright from
    leaving them running.
    """
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a parent died
        await asyncio.sleep(1.0)
    log.warning("The supervisor (pid %d) is gone: stopping gracefully.", parent)


def _cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format=_log_format())
    if args.app_dir is not None and not os.path.isdir(args.app_dir):
        raise CLIError(
            f"--app-dir {args.app_dir!r} is not a directory. "
            "Pass the directory that holds the module of module:attribute."
        )
    if args.workers == 1 and not args.reload:
        return asyncio.run(_run(args.target, args.app_dir, args.stop_timeout))
    watch = None
    if args.reload:
        try:  # optional: dispytch-core[reload]
            watchfiles = importlib.import_module("watchfiles")
        except ImportError:
            raise CLIError(
                "--reload needs the watchfiles library, which is not installed. "
                "Install it with: pip install 'dispytch-core[reload]'"
            ) from None
        watch = watchfiles.awatch
    # Fail here, in one line, rather than in every worker and its restarts.
    import_from_string(args.target, args.app_dir)
    supervisor = Supervisor(
        args.target,
        workers=args.workers,
        app_dir=args.app_dir,
        log_level=args.log_level,
        stop_timeout=args.stop_timeout,
        max_restarts=args.max_restarts,
        watch=watch,
    )
    return asyncio.run(supervisor.run())


class Supervisor:
    """Runs ``workers`` processes of ``dispytch run target`` and keeps them running.

    Each worker is a child process with its own interpreter and dispatcher (nothing is
    pickled: it imports the target itself). See the module docs for restarts, signals
    and reloads.
    """

    def __init__(
        self,
        target: str,
        *,
        workers: int,
        app_dir: str | None,
        log_level: str,
        stop_timeout: float | None,
        max_restarts: int,
        watch: Any = None,
    ) -> None:
        self.target = target
        self.workers = workers
        self.app_dir = os.path.abspath(app_dir if app_dir is not None else os.getcwd())
        self.log_level = log_level
        self.stop_timeout = stop_timeout
        self.max_restarts = max_restarts
        self.watch = watch
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts: dict[int, int] = {}
        self._stopping = False
        self._failed: str | None = None
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._signals = 0

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dispytch.cli", "run", self.target]
        cmd += ["--app-dir", self.app_dir, "--log-level", self.log_level]
        if self.stop_timeout is not None:
            cmd += ["--stop-timeout", str(self.stop_timeout)]
        return cmd

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env[WORKER_ENV] = str(index)
        # A session of its own: a terminal's Ctrl+C goes to the supervisor only, which
        # forwards one SIGTERM (the worker would count a second signal as "force").
        proc = await asyncio.create_subprocess_exec(
            *self._command(), env=env, start_new_session=True
        )
        self.procs[index] = proc
        log.info("Worker %d started (pid %d).", index, proc.pid)
        return proc

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; start it again when it dies, until stopping."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=0.5, factor=2.0, cap=10.0)
        while not self._stopping:
            started = loop.time()
            proc = await self._spawn(index)
            code = await proc.wait()
            if self._stopping:
                if code == -signal.SIGTERM:
                    # Killed by our SIGTERM before it set up its handlers: it was still
                    # starting, with no dispatcher running yet.
                    log.info("Worker %d (pid %d) stopped while starting.", index, proc.pid)
                elif code != 0:
                    log.warning("Worker %d (pid %d) stopped with code %d.", index, proc.pid, code)
                return
            if code == EXIT_USAGE:
                self._fail(f"worker {index} reported a usage error (exit {code})")
                return
            if loop.time() - started >= RESTART_RESET:
                backoff.reset()
                self.restarts[index] = 0
            count = self.restarts[index] = self.restarts.get(index, 0) + 1
            if count > self.max_restarts:
                self._fail(
                    f"worker {index} died {count} times in a row (last exit code {code}); "
                    f"giving up after --max-restarts {self.max_restarts}"
                )
                return
            delay = backoff.next()
            log.warning(
                "Worker %d (pid %d) died with code %d; restarting it in %.1fs (restart %d of "
                "at most %d in a row).",
                index,
                proc.pid,
                code,
                delay,
                count,
                self.max_restarts,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _fail(self, why: str) -> None:
        if self._failed is None:
            self._failed = why
            log.error("Stopping every worker: %s.", why)
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("Received %s: stopping %d worker(s) gracefully.", name, len(self.procs))
        else:
            log.warning("Received %s again: passing it on to cut the graceful stop short.", name)
            self._send(signal.SIGINT)
        self._stop.set()

    def _send(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after the deadline."""
        self._stopping = True
        self._send(signal.SIGTERM)
        running = [p for p in self.procs.values() if p.returncode is None]
        if not running:
            return
        timeout = (self.stop_timeout or DEFAULT_STOP_TIMEOUT) + KILL_GRACE
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        _, late = await asyncio.wait(waits, timeout=timeout)
        if late:
            log.error(
                "%d worker(s) still running %.0fs after SIGTERM; killing them.", len(late), timeout
            )
            self._send(signal.SIGKILL)
            await asyncio.wait(waits)

    async def _watch(self) -> None:
        async for changes in self.watch(self.app_dir, stop_event=self._stop):
            if any(str(path).endswith(".py") for _, path in changes):
                log.info("Source changed under %s: restarting the workers.", self.app_dir)
                self._changed.set()
                return

    async def run(self) -> int:
        """Supervise until a signal (exit 0), or a worker that cannot be kept (exit 1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            while True:
                self._stopping = False
                self._changed = asyncio.Event()
                keepers = [asyncio.ensure_future(self._keep(i)) for i in range(self.workers)]
                waits = [asyncio.ensure_future(self._stop.wait())]
                watcher = asyncio.ensure_future(self._watch()) if self.watch else None
                if watcher is not None:
                    waits.append(asyncio.ensure_future(self._changed.wait()))
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                await self._stop_all()
                await asyncio.gather(*keepers, return_exceptions=True)
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                self.procs.clear()
                if self._stop.is_set():
                    break
                self.restarts.clear()  # reloaded: a fresh start
            if self._failed is not None:
                sys.stderr.write(f"dispytch: {self._failed}.\n")
                return 1
            log.info("Every worker stopped.")
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


# -- dispytch jobs -----------------------------------------------------------------------

#: Exit code of a jobs operation the journal refused (no such run, a run not retryable or
#: over already): the source was fine, the request was not.
EXIT_REFUSED = 1

#: How many runs ``dispytch jobs list`` shows without ``--limit``.
JOBS_LIST_LIMIT = 50


class JobRefused(Exception):
    """The journal refused a jobs operation; printed in one line, exit code 1."""


def _as_durable(obj: Any) -> Any:
    from dispytch.durable import Durable

    if isinstance(obj, Durable):
        return obj
    inner = getattr(obj, "durable", None)  # e.g. dispytch.fastapi's Dispytch(app)
    return inner if isinstance(inner, Durable) else None


async def _resolve_durable(obj: Any, target: str) -> Any:
    durable = _as_durable(obj)
    if durable is not None:
        return durable
    if not callable(obj) or isinstance(obj, type):
        raise CLIError(
            f"{target} is a {type(obj).__name__}, not a dispytch.durable.Durable (or an "
            "object with a .durable, or a factory returning one)."
        )
    made = obj()
    if inspect.isawaitable(made):
        made = await made
    durable = _as_durable(made)
    if durable is None:
        raise CLIError(f"{target}() returned a {type(made).__name__}; it must return a Durable.")
    return durable


async def _jobs_source(args: argparse.Namespace) -> Any:
    """The Durable the command works on: the app's, or one over ``--store``."""
    from dispytch.durable import Durable
    from dispytch.durable.engine import DEFAULT_STORE, DEFAULT_TOPIC
    from dispytch.errors import ConfigError

    if args.app is not None:
        if "://" in args.app:
            raise CLIError(
                f"--app takes module:attribute; {args.app!r} is a URL. "
                "Pass a journal store URL as --store."
            )
        if args.transport is not None or args.topic is not None:
            raise CLIError(
                "--transport and --topic go with --store; the app's Durable has its own."
            )
        durable = await _resolve_durable(import_from_string(args.app, args.app_dir), args.app)
        where = f"the store of {args.app} ({durable.store!r})"
    else:
        url = args.store or os.environ.get("DISPYTCH_DURABLE_STORE") or DEFAULT_STORE
        if "://" not in url:
            raise CLIError(
                f"--store takes a journal store URL (sqlite:///jobs.db, postgresql://...), "
                f"not {url!r}. For an app's Durable pass --app module:attribute."
            )
        try:
            durable = Durable(args.transport, store=url, topic=args.topic or DEFAULT_TOPIC)
        except ConfigError as exc:
            raise CLIError(str(exc).replace("\n", " ")) from None
        given = (
            "--store"
            if args.store
            else "DISPYTCH_DURABLE_STORE"
            if os.environ.get("DISPYTCH_DURABLE_STORE")
            else "the default store"
        )
        where = f"{url} ({given})"
    store = durable.store
    _check_journal_file(store, where)
    try:
        await store.open()
    except Exception as exc:
        raise CLIError(
            f"Could not open the journal store {store!r}: {type(exc).__name__}: {exc}"
        ) from None
    return durable


def _check_journal_file(store: Any, where: str) -> None:
    """A SQLite journal that does not exist is a wrong path (opening would create it)."""
    from dispytch.durable import SQLiteJournalStore

    if isinstance(store, SQLiteJournalStore) and not os.path.exists(store.path):
        raise CLIError(
            f"No journal at {os.path.abspath(store.path)}, {where}: the file does not "
            "exist. Check the path (sqlite:///relative.db, sqlite:////absolute.db), or pass "
            "the app with --app module:attribute."
        )


async def _reaches_workers(durable: Any) -> bool:
    """Connect to the Durable's transport; whether what it sends reaches other processes."""
    from dispytch.memory import MemoryProducer

    try:
        await durable.connect()
    except Exception as exc:
        raise CLIError(
            f"Could not connect to the workers' transport {durable.transport}: "
            f"{type(exc).__name__}: {exc}".replace("\n", " ")
        ) from None
    return not isinstance(durable.emitter.producer, MemoryProducer)


def _time(ts: float, *, text: bool) -> str | None:
    if not ts:
        return None
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if text else moment.isoformat()


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # a store of someone else's: shown as it is


def _run_dict(run: Any) -> dict[str, Any]:
    now = time.time()
    data: dict[str, Any] = {
        "id": run.id,
        "function": run.function,
        "status": run.status,
        "attempts": run.attempts,
        "args": _parsed(run.args),
        "created": _time(run.created, text=False),
        "updated": _time(run.updated, text=False),
        "due": _time(run.due, text=False),
        "lease": {
            "token": run.lease_token,
            "until": _time(run.lease_until, text=False),
            "held": run.lease_until > now,
        },
        "parent": None,
    }
    if run.parent is not None:
        parent_id, position, index, count = run.parent
        data["parent"] = {"id": parent_id, "position": position, "index": index, "count": count}
    if run.status == "succeeded":
        data["result"] = _parsed(run.outcome)
    elif run.outcome is not None:
        data["error"] = _parsed(run.outcome)
    return data


def _outcome_dict(status: str, outcome: str) -> dict[str, Any]:
    if status == "ok":
        return {"result": _parsed(outcome)}
    if status == "error":
        return {"error": _parsed(outcome)}
    return {"children": int(outcome) if outcome.isdigit() else outcome}


def _journal_dict(journal: Any) -> dict[str, Any]:
    steps = []
    for position in sorted(journal.steps, key=_position_key):
        step = journal.steps[position]
        steps.append(
            {
                "position": position,
                "function": step.function,
                "status": step.status,
                "args_hash": step.args_hash,
                "created": _time(step.created, text=False),
                **_outcome_dict(step.status, step.outcome),
            }
        )
    children = {
        position: [
            {"index": index, "status": child.status, **_outcome_dict(child.status, child.outcome)}
            for index, child in sorted(slot.items())
        ]
        for position, slot in sorted(journal.children.items(), key=lambda kv: _position_key(kv[0]))
    }
    return {"run": _run_dict(journal.run), "steps": steps, "children": children}


def _position_key(position: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in position.split("."))


def _error_line(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type', 'Exception')}: {error.get('message', '')}"
    return str(error)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_runs(runs: list[Any], out: TextIO) -> None:
    if not runs:
        out.write("No runs.\n")
        return
    rows = [("ID", "FUNCTION", "STATUS", "ATTEMPTS", "CREATED", "UPDATED", "ERROR")]
    for run in runs:
        error = "" if run.status == "succeeded" or run.outcome is None else run.outcome
        rows.append(
            (
                run.id,
                run.function,
                run.status,
                str(run.attempts),
                _time(run.created, text=True) or "-",
                _time(run.updated, text=True) or "-",
                _short(_error_line(_parsed(error))) if error else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write(("  ".join([*cells, row[-1]])).rstrip() + "\n")


def _write_error(error: Any, out: TextIO, indent: str) -> None:
    out.write(f"{_error_line(error)}")
    if isinstance(error, dict):
        out.write(f" (retryable: {'yes' if error.get('retryable') else 'no'})\n")
        trace = str(error.get("traceback") or "").rstrip()
        for line in trace.splitlines():
            out.write(f"{indent}| {line}\n")
    else:
        out.write("\n")


def _print_journal(journal: Any, out: TextIO) -> None:
    run = journal.run
    now = time.time()
    out.write(f"run       {run.id}\n")
    out.write(f"function  {run.function}\n")
    out.write(f"status    {run.status}\n")
    out.write(f"attempts  {run.attempts} failed so far\n")
    out.write(f"args      {_short(run.args, 200)}\n")
    out.write(f"created   {_time(run.created, text=True)}\n")
    out.write(f"updated   {_time(run.updated, text=True)}\n")
    if run.due and not run.final:
        out.write(f"due       {_time(run.due, text=True)} (in {max(run.due - now, 0):.1f} s)\n")
    if run.lease_until > now:
        held = f"held until {_time(run.lease_until, text=True)} (token {run.lease_token})"
        out.write(f"lease     {held}\n")
    if run.parent is not None:
        parent_id, position, index, count = run.parent
        out.write(f"parent    {parent_id} (slot {position}, child {index} of {count})\n")
    if run.status == "succeeded":
        out.write(f"result    {_short(run.outcome or 'null', 200)}\n")
    elif run.outcome is not None:
        out.write("error     ")
        _write_error(_parsed(run.outcome), out, "          ")
    if not journal.steps:
        out.write("steps     none journalled\n")
    else:
        out.write("steps\n")
        for position in sorted(journal.steps, key=_position_key):
            step = journal.steps[position]
            when = _time(step.created, text=True) or "-"
            head = f"  {position:<6} {step.function:<24} {step.status:<8} {when}  "
            if step.status == "ok":
                out.write(f"{head}{_short(step.outcome)}\n")
            elif step.status == "error":
                out.write(head)
                _write_error(_parsed(step.outcome), out, "         ")
            else:
                slot = journal.children.get(position, {})
                out.write(f"{head}{len(slot)} of {step.outcome} children done\n")
    for position, slot in sorted(journal.children.items(), key=lambda kv: _position_key(kv[0])):
        out.write(f"children of step {position}\n")
        for index, child in sorted(slot.items()):
            if child.status == "ok":
                out.write(f"  {index:<4} ok     {_short(child.outcome)}\n")
            else:
                out.write(f"  {index:<4} {child.status:<6} ")
                _write_error(_parsed(child.outcome), out, "       ")


async def _jobs(args: argparse.Namespace) -> tuple[int, Any, str]:
    """Run one jobs command; returns the exit code, the JSON value and the text."""
    from dispytch.durable import RETRYABLE_STATUSES, STATUSES, DurableError

    if args.jobs_command == "list":
        unknown = sorted(set(args.status or ()) - STATUSES)
        if unknown:
            raise CLIError(
                f"Unknown status {', '.join(map(repr, unknown))}. "
                f"The statuses: {', '.join(sorted(STATUSES))}."
            )
    durable = await _jobs_source(args)
    out = io.StringIO()
    try:
        if args.jobs_command == "list":
            runs = await durable.list_runs(
                status=set(args.status) if args.status else None,
                function=args.function,
                limit=args.limit,
            )
            _print_runs(runs, out)
            return 0, {"runs": [_run_dict(r) for r in runs]}, out.getvalue()
        if args.jobs_command == "show":
            journal = await durable.show_run(args.id)
            _print_journal(journal, out)
            return 0, _journal_dict(journal), out.getvalue()
        before = await durable.store.get_run(args.id)
        if before is None:
            raise JobRefused(f"No run {args.id!r} in {durable.store!r}.")
        if args.jobs_command == "retry":
            if before.status not in RETRYABLE_STATUSES:
                raise JobRefused(
                    f"Run {args.id} is {before.status}; only a failed, dead or cancelled run "
                    "is retried."
                )
            if not await _reaches_workers(durable):
                instead = (
                    "Retry it from the app's process (await durable.retry(run_id))."
                    if args.app
                    else "Give the workers' transport: --transport URL (and --topic when "
                    "they use another), or the app with --app module:attribute."
                )
                raise CLIError(
                    f"jobs retry sends run {args.id}'s message to the workers, and "
                    f"{durable.transport} is the memory transport, which lives inside one "
                    f"process. {instead}"
                )
            record = await durable.retry(args.id)
            # (A worker may have taken it already: the status read after is pending or later.)
            text = (
                f"Run {record.id} was {before.status}; it starts over (now {record.status}), "
                "its message sent to the workers.\n"
            )
            return 0, {"run": _run_dict(record)}, text
        # cancel
        if before.final:
            raise JobRefused(f"Run {args.id} is {before.status}: it is over, nothing to cancel.")
        reaches = await _reaches_workers(durable)
        ids = await durable.cancel(args.id, reason=args.reason)
        lines = [f"Cancelled {len(ids)} run(s):", *(f"  {rid}" for rid in ids)]
        if not reaches:
            lines.append(
                f"({durable.transport} is the memory transport: no message reached the "
                "workers; they see the cancel when they next load the run.)"
            )
        return 0, {"cancelled": ids}, "\n".join(lines) + "\n"
    except DurableError as exc:
        raise JobRefused(str(exc).replace("\n", " ")) from None
    finally:
        await durable.stop()


def _cmd_jobs(args: argparse.Namespace) -> int:
    if getattr(args, "jobs_command", None) is None:
        raise CLIError("jobs needs a command: list, show ID, retry ID or cancel ID.")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code, data, text = asyncio.run(_jobs(args))
    except JobRefused as exc:
        if args.json:
            json.dump({"error": str(exc)}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        sys.stderr.write(f"dispytch: error: {exc}\n")
        return EXIT_REFUSED
    if args.json:
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text)
    return code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


# -- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dispytch`` command."""
    parser = argparse.ArgumentParser(
        prog="dispytch",
        description="Dispytch: typed async event handlers over pluggable transports.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dispytch {__version__} (Python {sys.version.split()[0]})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_plugins = sub.add_parser(
        "plugins",
        help="list installed plugins and what they provide",
        description="List every plugin Dispytch found, what it provides, and what failed.",
    )
    p_plugins.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p_plugins.set_defaults(func=_cmd_plugins)

    p_run = sub.add_parser(
        "run",
        help="run an EventDispatcher until SIGINT/SIGTERM",
        description=(
            "Import module:attribute (an EventDispatcher, or a callable or async callable "
            "returning one), start it, and stop it gracefully on SIGINT or SIGTERM."
        ),
    )
    p_run.add_argument("target", metavar="module:attribute")
    p_run.add_argument(
        "--app-dir",
        default=None,
        help="directory to put first on sys.path (default: the current directory)",
    )
    p_run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default: info)",
    )
    p_run.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=None,
        help="seconds in-flight work may take on stop (default: the dispatcher's own)",
    )
    p_run.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N worker processes sharing the work through the broker's consumer "
        "groups, restarted when they die (default: 1, in this process)",
    )
    p_run.add_argument(
        "--max-restarts",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="with --workers/--reload: give up (exit 1) when one worker dies N+1 times in "
        "a row (default: 10)",
    )
    p_run.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the workers when a .py file under --app-dir changes "
        "(needs: pip install 'dispytch-core[reload]')",
    )
    p_run.set_defaults(func=_cmd_run)

    p_jobs = sub.add_parser(
        "jobs",
        help="list, show, retry and cancel durable function runs",
        description=(
            "Operate on the runs of durable functions in a journal store: the store of a "
            "Durable given as --app module:attribute, or a store URL given as --store."
        ),
    )
    p_jobs.set_defaults(func=_cmd_jobs)
    jobs_sub = p_jobs.add_subparsers(dest="jobs_command", metavar="COMMAND")
    source = argparse.ArgumentParser(add_help=False)
    which = source.add_mutually_exclusive_group()
    which.add_argument(
        "--app",
        metavar="module:attribute",
        help="a Durable (or an object with a .durable, or a factory returning one), "
        "imported as dispytch run does",
    )
    which.add_argument(
        "--store",
        metavar="URL",
        help="a journal store URL (default: $DISPYTCH_DURABLE_STORE, else "
        "sqlite:///.dispytch/journal.sqlite3, the embedded default)",
    )
    source.add_argument(
        "--app-dir",
        default=None,
        help="with --app: directory to put first on sys.path (default: the current directory)",
    )
    source.add_argument(
        "--transport",
        metavar="URL",
        default=None,
        help="with --store, for retry and cancel: the workers' transport (default: "
        "$DISPYTCH_DURABLE_TRANSPORT)",
    )
    source.add_argument(
        "--topic", default=None, help="with --store: the workers' topic, when not the default"
    )
    source.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p_list = jobs_sub.add_parser(
        "list", parents=[source], help="runs, newest first", description="Runs, newest first."
    )
    p_list.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="only runs in this status (repeatable): pending, running, waiting, sleeping, "
        "retrying, limited, succeeded, failed, dead, cancelled",
    )
    p_list.add_argument("--function", metavar="NAME", help="only runs of this function")
    p_list.add_argument(
        "--limit",
        type=_positive_int,
        default=JOBS_LIST_LIMIT,
        metavar="N",
        help=f"at most N runs (default: {JOBS_LIST_LIMIT})",
    )
    p_show = jobs_sub.add_parser(
        "show",
        parents=[source],
        help="a run with its steps and errors",
        description="A run: status, attempts, arguments, outcome, each step and child.",
    )
    p_show.add_argument("id", metavar="ID")
    p_retry = jobs_sub.add_parser(
        "retry",
        parents=[source],
        help="start a failed, dead or cancelled run over",
        description=(
            "Start a failed, dead or cancelled run over with a new attempt budget: its "
            "failed steps run again, its finished steps do not. Sends the run's message to "
            "the workers."
        ),
    )
    p_retry.add_argument("id", metavar="ID")
    p_cancel = jobs_sub.add_parser(
        "cancel",
        parents=[source],
        help="cancel a run that is not over, and its unfinished children",
        description=(
            "Cancel a run that is not over and its unfinished children; a running run stops "
            "at its next step boundary."
        ),
    )
    p_cancel.add_argument("id", metavar="ID")
    p_cancel.add_argument(
        "--reason",
        default="cancelled with dispytch jobs cancel",
        help="stored in the run's error (RunCancelledError)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dispytch`` command; returns the exit code.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except CLIError as exc:
        sys.stderr.write(f"dispytch: error: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover - python -m dispytch.cli
    raise SystemExit(main())
