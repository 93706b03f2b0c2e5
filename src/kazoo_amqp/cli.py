"""The ``kazoo-amqp`` command line: argument parsing, one call each, named exit codes.

    kazoo-amqp run --config FILE
    kazoo-amqp check-config --config FILE
    kazoo-amqp publish EXCHANGE ROUTING_KEY PAYLOAD [--headers H] [--confirm] [--[no-]persistent]
    kazoo-amqp query EXCHANGE ROUTING_KEY PAYLOAD [--timeout-ms N] [--headers H]
    kazoo-amqp pua-publish PAYLOAD [--package P]
    kazoo-amqp encode TEXT
    kazoo-amqp json JSON PATH
    kazoo-amqp status
    kazoo-amqp db init
    kazoo-amqp kamailio-convert IN.cfg --out-dir DIR

``publish``/``query``/``pua-publish`` use a running daemon's socket; when none answers, publish
and query connect to the broker themselves and pua-publish writes the database directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from kazoo_amqp.errors import (
    BadPayload,
    BadRoutingKey,
    ConfigError,
    KazooError,
    MissingField,
    NotConnected,
    QueryTimeout,
    UsageError,
)

EXIT_OK = 0
EXIT_ABSENT = 1  # `json`: the path is absent
EXIT_BAD_INPUT = 2  # bad arguments, bad payload, bad config
EXIT_TIMEOUT = 3  # query timed out
EXIT_NO_BROKER = 4  # no daemon and no broker reachable
EXIT_FAILED = 5  # anything else the daemon or broker refused
EXIT_CONVERT_FAILED = 1  # `kamailio-convert`: the cfg cannot be converted; nothing written

DEFAULT_CONFIG = "kazoo-amqp.toml"


def _version() -> str:
    from kazoo_amqp import __version__

    return __version__


def _load(path: str | None, *, required: bool = True) -> Any:
    from kazoo_amqp.core.config import load_config

    path = path or os.environ.get("KAZOO_AMQP_CONFIG") or DEFAULT_CONFIG
    if not os.path.exists(path):
        if required:
            raise ConfigError(
                f"config file {path!r} not found: pass --config FILE "
                "(see examples/kazoo-amqp.toml) or set KAZOO_AMQP_CONFIG"
            )
        return None
    return load_config(path, default_app_version=_version())


def _setup_logging(level: str, fmt: str = "text") -> None:
    from kazoo_amqp.obs.logs import setup_logging

    setup_logging(level, fmt)


def _socket_path(args: argparse.Namespace) -> tuple[str | None, Any]:
    settings = _load(args.config, required=args.socket is None and args.config is not None)
    if args.socket:
        return args.socket, settings
    return (settings.socket if settings is not None else None), settings


def cmd_run(args: argparse.Namespace) -> int:
    from kazoo_amqp.daemon import Daemon

    settings = _load(args.config)
    _setup_logging(settings.log_level, settings.log_format)
    config_path = os.path.abspath(
        args.config or os.environ.get("KAZOO_AMQP_CONFIG") or DEFAULT_CONFIG
    )
    daemon = Daemon(settings, config_path)
    return _run_loop(daemon.run(), getattr(args, "loop", "auto"))


def _run_loop(main: Any, choice: str) -> int:
    """Run ``main`` on the chosen event loop (see docs/performance.md for why uvloop)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise UsageError(
                    "--loop uvloop: uvloop is not installed; pip install uvloop or use "
                    "--loop asyncio"
                ) from None
        else:
            logging.getLogger("kazoo_amqp.cli").info("event loop: uvloop %s", uvloop.__version__)
            result: int = uvloop.run(main)
            return result
    logging.getLogger("kazoo_amqp.cli").info("event loop: asyncio")
    return asyncio.run(main)


def cmd_check_config(args: argparse.Namespace) -> int:
    from kazoo_amqp.core.config import describe

    if args.describe or args.example:
        from kazoo_amqp.core.config_keys import describe_table, render_example

        if args.example:
            print(render_example(), end="")
            return EXIT_OK
        print("\t".join(("name", "type", "default", "range", "meaning", "ignored-why")))
        for row in describe_table():
            print("\t".join(row))
        return EXIT_OK
    settings = _load(args.config)
    for key, value in describe(settings):
        print(f"{key} = {value}")
    for note in getattr(settings, "notes", ()):
        print(f"note: {note}")
    if settings.routes:
        from kazoo_amqp.daemon import run_mod_init

        subs = run_mod_init(settings)
        print(f"routes: {settings.routes}: kazoo:mod-init declares {len(subs)} subscriptions")
    print("config OK")
    return EXIT_OK


def _client_call(
    args: argparse.Namespace, call: Callable[[Any], Any], direct: Callable[[Any], Any] | None
) -> Any:
    from kazoo_amqp.ipc.client import Client

    path, settings = _socket_path(args)
    if path is not None:
        client = Client(path, timeout=30.0)
        try:
            return call(client)
        except NotConnected as exc:
            if direct is None or ("not listening" not in str(exc) and "daemon" not in str(exc)):
                raise
        finally:
            client.close()
    if direct is None or settings is None:
        raise NotConnected(
            "no kazoo-amqp daemon answers and no config was given to reach the broker "
            "directly: pass --config FILE"
        )
    return direct(settings)


async def _direct_manager(settings: Any, action: Callable[[Any], Any]) -> Any:
    from kazoo_amqp.amqp.manager import Manager

    # A one-shot command: the caller gets the outcome, not the reconnect chatter.
    logging.getLogger("kazoo_amqp").setLevel(logging.ERROR)
    manager = Manager(settings, subscriptions=[], dispatcher=None, on_event=lambda *a: None)
    await manager.start()
    try:
        timeout = settings.amqp_connect_timeout + 4.0
        if not await manager.wait_connected(timeout, give_up_when_all_failed=True):
            raise NotConnected(f"no broker reachable: {manager.describe_links()}")
        return await action(manager)
    finally:
        await manager.stop()


def cmd_publish(args: argparse.Namespace) -> int:
    result = _client_call(
        args,
        lambda c: c.publish(
            args.exchange,
            args.routing_key,
            args.payload,
            headers=args.headers,
            mandatory=args.mandatory,
            confirm=args.confirm,
            persistent=args.persistent,
        ),
        lambda s: asyncio.run(
            _direct_manager(
                s,
                lambda m: m.publish(
                    args.exchange,
                    args.routing_key,
                    args.payload,
                    args.headers,
                    mandatory=args.mandatory,
                    persistent=bool(args.persistent),
                ),
            )
        ),
    )
    print(json.dumps(result))
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    from kazoo_amqp.core import jsonc

    def direct(s: Any) -> Any:
        text = asyncio.run(
            _direct_manager(
                s,
                lambda m: m.query(
                    args.exchange,
                    args.routing_key,
                    args.payload,
                    args.headers,
                    args.timeout_ms,
                    mandatory=args.mandatory,
                ),
            )
        )
        return jsonc.loads(text)

    reply = _client_call(
        args,
        lambda c: c.query(
            args.exchange,
            args.routing_key,
            args.payload,
            timeout_ms=args.timeout_ms,
            headers=args.headers,
            mandatory=args.mandatory,
        ),
        direct,
    )
    print(jsonc.dumps(reply))
    return EXIT_OK


def cmd_pua_publish(args: argparse.Namespace) -> int:
    def direct(s: Any) -> Any:
        from kazoo_amqp.presence.service import PresenceService

        service = PresenceService.from_settings(s)
        try:
            return service.publish(args.payload, args.package)
        finally:
            service.close()

    result = _client_call(args, lambda c: c.pua_publish(args.payload, args.package), direct)
    print(json.dumps(result))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    result = _client_call(args, lambda c: c.status(), None)
    print(json.dumps(result, indent=2))
    return EXIT_OK


def cmd_encode(args: argparse.Namespace) -> int:
    from kazoo_amqp.core.encode import encode_checked

    settings = _load(args.config, required=False)
    mode = settings.encode_high_bytes if settings is not None else "utf8"
    if args.x86:
        mode = "x86"
    print(encode_checked(args.text.encode("utf-8", "surrogateescape"), high_bytes=mode))
    return EXIT_OK


def cmd_json(args: argparse.Namespace) -> int:
    from kazoo_amqp.core.jsonpath import kazoo_json

    settings = _load(args.config, required=False)
    escape = settings.json_escape_char if settings is not None else "%"
    value = kazoo_json(args.json, args.path, escape=escape)
    if value is None:
        print(f"kazoo-amqp json: path {args.path!r} is absent", file=sys.stderr)
        return EXIT_ABSENT
    print(value)
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from kazoo_amqp.presence.service import init_database

    settings = _load(args.config)
    created = init_database(settings)
    print("created the presentity schema" if created else "schema already present (version 5)")
    return EXIT_OK


def _read_cfg(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _write_tree(out_dir: str, files: dict[str, str], links: dict[str, str]) -> None:
    """Write ``files`` and make ``links`` under ``out_dir``, all or nothing.

    Everything is first written to a fresh folder next to ``out_dir``, then moved in place.
    """
    import shutil
    import tempfile

    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    staging = tempfile.mkdtemp(prefix=".kamailio-convert-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the cfg from Kamailio's user
    try:
        for rel, text in files.items():
            path = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as h:
                h.write(text)
        for rel, target in links.items():
            path = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(os.path.realpath(target), path)
        if not os.path.exists(out_dir):
            os.rename(staging, out_dir)
            return
        for rel in [*files, *links]:
            dest = os.path.join(out_dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.islink(dest) or os.path.isfile(dest):
                os.unlink(dest)
            os.rename(os.path.join(staging, rel), dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _package_dir() -> str:
    """The folder holding this ``kazoo_amqp`` package (for Kamailio's Python ``sys.path``)."""
    import kazoo_amqp

    return os.path.dirname(os.path.dirname(os.path.abspath(kazoo_amqp.__file__)))


def cmd_kamailio_convert(args: argparse.Namespace) -> int:
    from kazoo_amqp.core.kamailio.convert import ConversionFailed, convert

    main_path = os.path.abspath(args.cfg)
    out_dir = os.path.abspath(args.out_dir)
    try:
        result = convert(
            main_path,
            _read_cfg,
            out_dir=out_dir,
            bridge=args.bridge,
            socket_workers=args.socket_workers,
            package_dir=args.package_dir or _package_dir(),
        )
    except ConversionFailed as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"kazoo-amqp: {len(exc.problems)} problem(s); nothing written", file=sys.stderr)
        return EXIT_CONVERT_FAILED
    except OSError as exc:
        print(f"{exc.filename}: cannot be read ({exc.strerror}); nothing written", file=sys.stderr)
        return EXIT_CONVERT_FAILED
    same_folder = os.path.realpath(out_dir) == os.path.realpath(os.path.dirname(main_path))
    links = {
        rel: target
        for rel, target in result.links.items()
        if os.path.realpath(target) != os.path.realpath(os.path.join(out_dir, rel))
    }
    if same_folder and any(
        _read_cfg(os.path.join(out_dir, rel)) != text for rel, text in result.files.items()
    ):
        print(
            f"kazoo-amqp: --out-dir {args.out_dir} is the input folder and the conversion "
            "changes files there; pass another --out-dir (nothing written)",
            file=sys.stderr,
        )
        return EXIT_CONVERT_FAILED
    try:
        _write_tree(out_dir, dict(result.files), links)
    except OSError as exc:
        print(f"kazoo-amqp: writing {args.out_dir} failed: {exc}", file=sys.stderr)
        return EXIT_CONVERT_FAILED
    for line in result.report or ("nothing to rewrite: the cfg is converted already",):
        print(line)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(
        f"wrote {args.out_dir}: {len(result.files)} files, {len(links)} links to unchanged includes"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kazoo-amqp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"kazoo-amqp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument(
            "--config", help="TOML config (default: $KAZOO_AMQP_CONFIG or ./kazoo-amqp.toml)"
        )
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run the daemon")
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop (libuv) when installed (auto, the default), or the "
        "standard asyncio loop",
    )
    p = add("check-config", cmd_check_config, "validate the config and routes without connecting")
    p.add_argument(
        "--describe",
        action="store_true",
        help="print every config key (name, type, default, range, meaning, ignored-why) and exit",
    )
    p.add_argument(
        "--example",
        action="store_true",
        help="print the example config generated from the key table (examples/kazoo-amqp.toml)",
    )
    for name, func, help_ in (
        ("publish", cmd_publish, "publish a JSON message"),
        ("query", cmd_query, "publish and wait for the correlated reply"),
    ):
        p = add(name, func, help_)
        p.add_argument("exchange")
        p.add_argument("routing_key")
        p.add_argument("payload", help="JSON object text")
        p.add_argument("--headers", help="AMQP headers, k1=v1;k2=v2")
        p.add_argument(
            "--mandatory",
            action="store_true",
            help="fail (exit 5) when no queue is bound for the routing key",
        )
        p.add_argument("--socket", help="daemon socket (default: from the config)")
        if name == "publish":
            p.add_argument(
                "--confirm",
                action="store_true",
                help="wait for the broker's confirm (exit non-zero on its error); default: "
                "return once the daemon accepted the message",
            )
            p.add_argument(
                "--persistent",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="delivery mode 2 (--persistent) or 1 (--no-persistent); default: the daemon's",
            )
        if name == "query":
            p.add_argument("--timeout-ms", type=int, default=None)
    p = add("pua-publish", cmd_pua_publish, "write presence state from a JSON update")
    p.add_argument("payload")
    p.add_argument("--package", choices=("presence", "dialog", "message-summary"))
    p.add_argument("--socket")
    p = add("status", cmd_status, "show a running daemon's state and counters")
    p.add_argument("--socket")
    p = add("encode", cmd_encode, "kz.encode a routing-key word")
    p.add_argument("text")
    p.add_argument("--x86", action="store_true", help="C module's signed-char form for non-ASCII")
    p = add("json", cmd_json, "read a JSON path (kz.json)")
    p.add_argument("json")
    p.add_argument("path")
    p = add("db", cmd_db, "database tools")
    p.add_argument("action", choices=("init",))
    p = sub.add_parser(
        "kamailio-convert",
        help="convert a kamailio.cfg written for the C kazoo module to stock Kamailio + bridge",
    )
    p.add_argument("cfg", help="the main cfg file (IN.cfg); its includes are followed")
    p.add_argument("--out-dir", required=True, help="folder for the converted files")
    p.add_argument(
        "--bridge",
        metavar="HOST:PORT",
        help="the bridge's xhttp socket in Kamailio (default 127.0.0.1:5091, or the value of "
        "an already converted cfg)",
    )
    p.add_argument(
        "--socket-workers",
        type=int,
        metavar="N",
        help="Kamailio processes serving the bridge socket (default 4)",
    )
    p.add_argument(
        "--package-dir",
        metavar="DIR",
        help="folder holding the kazoo_amqp package for Kamailio's Python (default: the one "
        "this command runs from)",
    )
    p.set_defaults(func=cmd_kamailio_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except QueryTimeout as exc:
        print(f"kazoo-amqp: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except NotConnected as exc:
        print(f"kazoo-amqp: {exc}", file=sys.stderr)
        return EXIT_NO_BROKER
    except (ConfigError, UsageError, BadPayload, BadRoutingKey, MissingField) as exc:
        print(f"kazoo-amqp: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KazooError as exc:
        print(f"kazoo-amqp: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
