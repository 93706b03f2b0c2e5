"""The event-route registry and routes-file loading (workers/router.py; spec §4.3, ER-12)."""

from __future__ import annotations

import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp.core.route_names import candidates
from kazoo_amqp.errors import ConfigError, UsageError
from kazoo_amqp.workers.router import Router, find_callback, find_router, load_routes_module


def _table(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """parametrize keywords for (id, *values) rows."""
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


def _handler(kz: Any) -> None:
    return None


def _other(kz: Any) -> None:
    return None


@pytest.fixture
def clean_imports() -> Iterator[None]:
    """Undo what loading a routes file does to sys.path and sys.modules."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


# ---------------------------------------------------------------------------------------------
# Registration


# (id, names registered)
REGISTRATIONS: list[tuple[str, tuple[str, ...]]] = [
    ("mod-init", ("kazoo:mod-init",)),
    ("catch-all", ("kazoo:consumer-event",)),
    ("specific", ("kazoo:consumer-event-presence-update",)),
    (
        "several-names-one-handler",
        ("kazoo:consumer-event-connection-open", "kazoo:consumer-event-connection-closed"),
    ),
    ("trailing-dash-from-empty-name", ("kazoo:consumer-event-presence-",)),
    (
        "dots-and-json-kept-by-normalisation",
        ("kazoo:consumer-event-presence-dialog.update", 'kazoo:consumer-event-{ "a": 1 }-x'),
    ),
    ("other-names-are-free-form", ("my-own-route", "Kazoo:Custom")),
]


@pytest.mark.parametrize(("names",), **_table(REGISTRATIONS))
def test_route_decorator_registers_every_name_and_returns_the_function(
    names: tuple[str, ...],
) -> None:
    """@router.route(*names) maps each name to the function and leaves the function unchanged."""
    router = Router()
    assert router.route(*names)(_handler) is _handler
    assert router.names == names
    assert len(router) == len(names)
    for name in names:
        assert name in router
        assert router.get(name) is _handler


def test_add_registers_like_the_decorator() -> None:
    """Router.add(name, handler) is the non-decorator form."""
    router = Router()
    router.add("kazoo:mod-init", _handler)
    assert router.get("kazoo:mod-init") is _handler
    assert router.get("kazoo:consumer-event") is None
    assert "kazoo:consumer-event" not in router


def test_names_keep_registration_order() -> None:
    """`names` lists routes in the order they were registered."""
    router = Router()
    for name in ("c", "a", "b"):
        router.add(name, _handler)
    assert router.names == ("c", "a", "b")


@pytest.mark.parametrize(
    ("first", "second"),
    [(_handler, _other), (_handler, _handler)],
    ids=["different-handler", "same-handler"],
)
def test_second_handler_for_one_name_is_refused(first: Any, second: Any) -> None:
    """A name can be registered once; the first handler stays."""
    router = Router()
    router.add("kazoo:consumer-event-presence-update", first)
    with pytest.raises(UsageError, match="registered twice"):
        router.add("kazoo:consumer-event-presence-update", second)
    assert router.get("kazoo:consumer-event-presence-update") is first


def test_decorator_with_a_repeated_name_is_refused() -> None:
    """@router.route('x', 'x') is a duplicate too."""
    with pytest.raises(UsageError, match="registered twice"):
        Router().route("kazoo:mod-init", "kazoo:mod-init")(_handler)


# (id, route name, lower-case name the error suggests)
UPPER_CASE: list[tuple[str, str, str]] = [
    ("ER-12", "kazoo:consumer-event-Presence-Update", "kazoo:consumer-event-presence-update"),
    ("all-caps-suffix", "kazoo:consumer-event-CALL-EVENT", "kazoo:consumer-event-call-event"),
    ("one-letter", "kazoo:consumer-event-presencE", "kazoo:consumer-event-presence"),
]


@pytest.mark.parametrize(("name", "suggested"), **_table(UPPER_CASE))
def test_upper_case_consumer_event_name_is_refused_with_the_lower_case_suggestion(
    name: str, suggested: str
) -> None:
    """A consumer-event route with upper case could never match, so it is refused (ER-12)."""
    router = Router()
    with pytest.raises(UsageError, match="never match") as info:
        router.add(name, _handler)
    assert repr(suggested) in str(info.value)
    assert len(router) == 0


# (id, route name that the look-up can never produce)
NEVER_MATCHING: list[tuple[str, str]] = [
    ("upper-case-prefix", "Kazoo:Consumer-Event-presence-update"),
    ("mixed-case-prefix", "kazoo:Consumer-Event"),
    ("underscore-is-normalised-to-dash", "kazoo:consumer-event-call_event"),
]


@pytest.mark.parametrize(("name",), **_table(NEVER_MATCHING))
def test_consumer_event_name_that_can_never_match_is_refused(name: str) -> None:
    """Any consumer-event name that normalisation can never produce is refused like ER-12."""
    with pytest.raises(UsageError, match="never match"):
        Router().add(name, _handler)


def test_upper_case_non_ascii_letter_is_accepted_because_lookup_keeps_it() -> None:
    """Look-up lowercases ASCII only (§4.3), so `É` in a route name can match and is accepted."""
    payload = {"Event-Category": "Évènement", "Event-Name": "x"}
    name = candidates(payload, key="Event-Category", subkey="Event-Name")[0]
    assert name == "kazoo:consumer-event-Évènement-x"
    router = Router()
    router.add(name, _handler)
    assert router.first([name]) == (name, _handler)


# (id, bad name)
BAD_NAMES: list[tuple[str, Any]] = [
    ("empty", ""),
    ("none", None),
    ("bytes", b"kazoo:mod-init"),
    ("int", 1),
]


@pytest.mark.parametrize(("name",), **_table(BAD_NAMES))
def test_name_must_be_a_non_empty_string(name: Any) -> None:
    """Empty or non-string route names raise UsageError."""
    with pytest.raises(UsageError, match="non-empty string"):
        Router().add(name, _handler)


def test_route_without_names_is_refused() -> None:
    """@router.route() with no name is a usage error that shows an example."""
    with pytest.raises(UsageError, match="kazoo:mod-init"):
        Router().route()


def test_non_callable_handler_is_refused() -> None:
    """The handler must be callable."""
    with pytest.raises(UsageError, match="not callable"):
        Router().add("kazoo:mod-init", "not a function")  # type: ignore[arg-type]


def test_repr_lists_the_routes() -> None:
    """repr shows the count and the names (or '-' when empty)."""
    router = Router()
    assert repr(router) == "<Router 0 routes: ->"
    router.route("a", "b")(_handler)
    assert repr(router) == "<Router 2 routes: a, b>"


# ---------------------------------------------------------------------------------------------
# first(): candidate order (§4.3)

ER1 = candidates(
    {"Event-Category": "presence", "Event-Name": "update"},
    key="Event-Category",
    subkey="Event-Name",
)

# (id, registered names, candidates, expected winner or None)
FIRSTS: list[tuple[str, list[str], tuple[str, ...], str | None]] = [
    ("most-specific-wins", list(ER1), ER1, ER1[0]),
    ("registration-order-irrelevant", list(reversed(ER1)), ER1, ER1[0]),
    ("category-only", [ER1[1], ER1[4]], ER1, ER1[1]),
    ("field-names", [ER1[2], ER1[3]], ER1, ER1[2]),
    ("catch-all", ["kazoo:consumer-event", "kazoo:mod-init"], ER1, "kazoo:consumer-event"),
    ("nothing-matches", ["kazoo:mod-init"], ER1, None),
    ("no-candidates", list(ER1), (), None),
]


@pytest.mark.parametrize(("registered", "names", "winner"), **_table(FIRSTS))
def test_first_returns_the_earliest_candidate_with_a_handler(
    registered: list[str], names: tuple[str, ...], winner: str | None
) -> None:
    """first() walks the candidates in order and returns (name, handler) of the first hit."""
    router = Router()
    handlers = {}
    for name in registered:
        handlers[name] = lambda kz, _n=name: _n
        router.add(name, handlers[name])
    found = router.first(names)
    if winner is None:
        assert found is None
    else:
        assert found == (winner, handlers[winner])


def test_first_accepts_any_iterable_and_stops_at_the_first_hit() -> None:
    """first() consumes a generator lazily: nothing after the winner is asked for."""
    router = Router()
    router.add("b", _handler)
    seen: list[str] = []

    def names() -> Iterator[str]:
        for n in ("a", "b", "c"):
            seen.append(n)
            yield n

    assert router.first(names()) == ("b", _handler)
    assert seen == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# load_routes_module


ROUTES_FILE = """
from kazoo_amqp import Router
router = Router()

@router.route("kazoo:mod-init")
def init(kz):
    pass
"""


def test_load_routes_module_imports_a_py_file(tmp_path: Path, clean_imports: None) -> None:
    """A .py path is imported as a module and its directory goes on sys.path (sibling imports)."""
    (tmp_path / "helper_mod_abc.py").write_text("VALUE = 42\n")
    path = tmp_path / "my-routes.py"
    path.write_text(ROUTES_FILE + "import helper_mod_abc\nVALUE = helper_mod_abc.VALUE\n")
    module = load_routes_module(str(path))
    assert module.VALUE == 42
    assert module.__name__ == "kazoo_routes_my_routes"
    assert find_router(module).names == ("kazoo:mod-init",)
    assert str(tmp_path) in sys.path


def test_load_routes_module_imports_a_dotted_module(tmp_path: Path, clean_imports: None) -> None:
    """A dotted name is imported with importlib from sys.path."""
    pkg = f"kzt_pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "routes.py").write_text(ROUTES_FILE)
    sys.path.insert(0, str(tmp_path))
    module = load_routes_module(f"{pkg}.routes")
    assert module.__name__ == f"{pkg}.routes"
    assert "kazoo:mod-init" in find_router(module)


# (id, path relative to tmp, or absolute)
MISSING_FILES: list[tuple[str, str]] = [
    ("missing-py", "nope.py"),
    ("missing-path-without-suffix", "sub/nope"),
]


@pytest.mark.parametrize(("relative",), **_table(MISSING_FILES))
def test_missing_routes_file_is_a_config_error_naming_routes(tmp_path: Path, relative: str) -> None:
    """A path that does not exist gives ConfigError(key='routes') that says 'file not found'."""
    path = str(tmp_path / relative)
    with pytest.raises(ConfigError, match=r"'routes'.*file not found") as info:
        load_routes_module(path)
    assert info.value.key == "routes"
    assert repr(path) in str(info.value)


# (id, routes file text, exception name in the message, message text)
BROKEN_FILES: list[tuple[str, str, str, str]] = [
    ("raises", "raise RuntimeError('boom at import')\n", "RuntimeError", "boom at import"),
    ("syntax-error", "def f(:\n", "SyntaxError", ""),
    (
        "missing-import",
        "import kzt_no_such_module_xyz\n",
        "ModuleNotFoundError",
        "kzt_no_such_module_xyz",
    ),
    (
        "duplicate-route",
        ROUTES_FILE + "router.add('kazoo:mod-init', init)\n",
        "UsageError",
        "registered twice",
    ),
]


@pytest.mark.parametrize(("text", "exc_name", "detail"), **_table(BROKEN_FILES))
def test_routes_file_that_fails_on_import_is_a_config_error_naming_the_exception(
    tmp_path: Path, clean_imports: None, text: str, exc_name: str, detail: str
) -> None:
    """The import error is wrapped in ConfigError(key='routes') with its type and message."""
    path = tmp_path / "routes.py"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"failed to import: {exc_name}") as info:
        load_routes_module(str(path))
    assert info.value.key == "routes"
    assert detail in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("name", "exc_name"),
    [
        ("kzt_no_such_module_xyz.routes", "ModuleNotFoundError"),
        ("kzt_broken_dotted_xyz", "ZeroDivisionError"),
    ],
    ids=["missing-module", "module-raises"],
)
def test_dotted_module_that_fails_is_a_config_error_naming_the_exception(
    tmp_path: Path, clean_imports: None, name: str, exc_name: str
) -> None:
    """A dotted name that cannot be imported gives ConfigError(key='routes') naming the error."""
    (tmp_path / "kzt_broken_dotted_xyz.py").write_text("1 / 0\n")
    sys.path.insert(0, str(tmp_path))
    with pytest.raises(ConfigError, match=f"'routes'.*failed to import: {exc_name}") as info:
        load_routes_module(name)
    assert info.value.key == "routes"


def test_existing_file_without_py_suffix_cannot_be_loaded(
    tmp_path: Path, clean_imports: None
) -> None:
    """A path that is not a Python source file gives ConfigError(key='routes')."""
    path = tmp_path / "routes.txt"
    path.write_text(ROUTES_FILE)
    with pytest.raises(ConfigError, match="cannot load it") as info:
        load_routes_module(str(path))
    assert info.value.key == "routes"


# ---------------------------------------------------------------------------------------------
# find_router / find_callback


def _module(**attrs: Any) -> types.ModuleType:
    module = types.ModuleType("kzt_fake_routes")
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def test_find_router_prefers_the_one_named_router() -> None:
    """`router` wins even when the module holds other Router objects."""
    named, other = Router(), Router()
    assert find_router(_module(other=other, router=named, third=Router())) is named


def test_find_router_takes_a_single_unnamed_instance() -> None:
    """With no `router`, the module's only Router object is used."""
    only = Router()
    assert find_router(_module(routes=only, router="not a Router")) is only


def test_find_router_without_any_router_gives_an_empty_one() -> None:
    """A module without Router objects (e.g. callback only) gets an empty Router."""
    found = find_router(_module(handler=_handler))
    assert isinstance(found, Router)
    assert len(found) == 0


def test_find_router_with_two_unnamed_instances_is_a_config_error() -> None:
    """Two Router objects, none named `router`: ConfigError asks to name one `router`."""
    with pytest.raises(ConfigError, match=r"2 Router objects.*none is named 'router'") as info:
        find_router(_module(a=Router(), b=Router()))
    assert info.value.key == "routes"


def test_find_callback_returns_the_named_function() -> None:
    """find_callback returns the module attribute of that name."""
    assert find_callback(_module(ksr_kazoo_event=_handler), "ksr_kazoo_event") is _handler


@pytest.mark.parametrize(
    ("attrs",),
    [({},), ({"ksr_kazoo_event": "a string"},), ({"ksr_kazoo_event": None},)],
    ids=["absent", "not-callable", "none"],
)
def test_find_callback_missing_or_not_callable_is_a_config_error(attrs: dict[str, Any]) -> None:
    """A missing or non-callable event_callback gives ConfigError(key='event_callback')."""
    with pytest.raises(ConfigError, match=r"'event_callback'.*def ksr_kazoo_event\(kz\)") as info:
        find_callback(_module(**attrs), "ksr_kazoo_event")
    assert info.value.key == "event_callback"


def test_routes_file_round_trip_through_find_router(tmp_path: Path, clean_imports: None) -> None:
    """A realistic routes file: load, find the router, resolve a message to its handler."""
    path = tmp_path / "routes.py"
    path.write_text(
        textwrap.dedent("""
        from kazoo_amqp import Router
        router = Router()

        @router.route("kazoo:consumer-event-presence")
        def presence(kz):
            return "presence"

        @router.route("kazoo:consumer-event")
        def fallback(kz):
            return "fallback"
    """)
    )
    router = find_router(load_routes_module(str(path)))
    found = router.first(ER1)
    assert found is not None
    assert found[0] == "kazoo:consumer-event-presence"
    assert found[1](None) == "presence"
