"""The ``dispytch`` command: list plugins, run a dispatcher.

``dispytch plugins [--json]``
    Every plugin Dispytch found (core's own included) with its distribution, version, the
    hooks it implements and what it provides, then the plugins that failed to load and any
    conflicts. ``--json`` prints the same as one JSON object, for scripts.

``dispytch run module:attribute [--app-dir DIR]``
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

Only the standard library's :mod:`argparse` is used: the command adds no dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from dispytch._version import __version__
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
        waiters = [asyncio.ensure_future(stop_requested.wait())]
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


def _cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_run(args.target, args.app_dir, args.stop_timeout))


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
        type=float,
        default=None,
        help="seconds in-flight work may take on stop (default: the dispatcher's own)",
    )
    p_run.set_defaults(func=_cmd_run)
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
