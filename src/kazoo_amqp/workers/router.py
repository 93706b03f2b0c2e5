"""``Router``: the registry of event routes a routes file declares.

    from kazoo_amqp import Router
    router = Router()

    @router.route("kazoo:consumer-event-presence-update")
    def presence_update(kz): ...

Handlers are plain functions or ``async def`` coroutines taking one argument, the ``Kz`` context.
The registry does no I/O; the daemon and the workers look handlers up by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from kazoo_amqp.core.route_names import normalise
from kazoo_amqp.errors import ConfigError, UsageError

Handler = Callable[[Any], Any]

_CONSUMER_EVENT = "kazoo:consumer-event"


class Router:
    """Maps event-route names (``kazoo:mod-init``, ``kazoo:consumer-event-...``) to handlers."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def route(self, *names: str) -> Callable[[Handler], Handler]:
        """Decorator registering the function under one or more route names."""
        if not names:
            raise UsageError("router.route() needs at least one route name, e.g. 'kazoo:mod-init'")

        def register(func: Handler) -> Handler:
            for name in names:
                self.add(name, func)
            return func

        return register

    def add(self, name: str, handler: Handler) -> None:
        """Register ``handler`` under ``name``; a second handler for one name is an error."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"route name must be a non-empty string, got {name!r}")
        if name[: len(_CONSUMER_EVENT)].lower() == _CONSUMER_EVENT:
            # Looked-up names are normalised (ASCII lower case, '_' -> '-', spec §4.3), so a
            # route whose name is not in that form could never run (ER-12).
            wanted = _CONSUMER_EVENT + normalise(name[len(_CONSUMER_EVENT) :])
            if name != wanted:
                raise UsageError(
                    f"route {name!r} would never match: consumer-event names are looked up with "
                    f"ASCII letters lower-cased and '_' turned into '-'; write {wanted!r}"
                )
        if name in self._handlers:
            raise UsageError(f"route {name!r} is registered twice; keep one handler per name")
        if not callable(handler):
            raise UsageError(f"handler for route {name!r} is not callable: {handler!r}")
        self._handlers[name] = handler

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def first(self, names: Iterable[str]) -> tuple[str, Handler] | None:
        """The first of ``names`` that has a handler, with the handler (route fallback order)."""
        handlers = self._handlers
        for name in names:
            handler = handlers.get(name)
            if handler is not None:
                return name, handler
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"<Router {len(self._handlers)} routes: {', '.join(self._handlers) or '-'}>"


def load_routes_module(routes: str) -> ModuleType:
    """Import the routes file (a ``.py`` path) or module (a dotted name)."""
    if routes.endswith(".py") or os.sep in routes:
        if not os.path.isfile(routes):
            raise ConfigError(
                f"config key 'routes' = {routes!r}: file not found; give the path of a Python "
                "file defining `router = Router()` (relative paths are relative to the config)",
                key="routes",
            )
        name = "kazoo_routes_" + os.path.splitext(os.path.basename(routes))[0].replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, routes)
        if spec is None or spec.loader is None:
            raise ConfigError(f"config key 'routes' = {routes!r}: cannot load it", key="routes")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        directory = os.path.dirname(os.path.abspath(routes))
        if directory not in sys.path:
            sys.path.insert(0, directory)
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            raise _exited(routes, exc) from None
        except Exception as exc:
            raise ConfigError(
                f"routes file {routes!r} failed to import: {type(exc).__name__}: {exc}",
                key="routes",
            ) from exc
        return module
    try:
        return importlib.import_module(routes)
    except SystemExit as exc:
        raise _exited(routes, exc) from None
    except Exception as exc:
        raise ConfigError(
            f"config key 'routes' = {routes!r}: module failed to import: "
            f"{type(exc).__name__}: {exc}",
            key="routes",
        ) from exc


def _exited(routes: str, exc: SystemExit) -> ConfigError:
    """A routes file must not end the process: say so instead of exiting with its code."""
    return ConfigError(
        f"routes {routes!r} called sys.exit({exc.code!r}) while being imported: a routes file "
        "must only define its Router and handlers; raise an exception instead to refuse to start",
        key="routes",
    )


def has_router(module: ModuleType) -> bool:
    """True when the module defines a :class:`Router` (what :func:`find_router` would use)."""
    return any(isinstance(v, Router) for v in vars(module).values())


def find_router(module: ModuleType) -> Router:
    """The module's ``router`` attribute, or its only ``Router`` instance."""
    candidate = getattr(module, "router", None)
    if isinstance(candidate, Router):
        return candidate
    found = [v for v in vars(module).values() if isinstance(v, Router)]
    if len(found) == 1:
        return found[0]
    if not found:
        return Router()
    raise ConfigError(
        f"routes module {module.__name__} defines {len(found)} Router objects and none is named "
        "'router': name the one to use `router`",
        key="routes",
    )


def find_callback(module: ModuleType, name: str) -> Handler:
    """The ``event_callback`` function named in the config."""
    func = getattr(module, name, None)
    if not callable(func):
        raise ConfigError(
            f"config key 'event_callback' = {name!r}: the routes module {module.__name__} has no "
            f"function of that name; define `def {name}(kz): ...` there or remove the key",
            key="event_callback",
        )
    return func  # type: ignore[no-any-return]
