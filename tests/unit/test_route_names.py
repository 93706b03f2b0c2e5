"""Event-route candidates for consumed messages (spec §4.3, vectors §15.6)."""

from __future__ import annotations

from typing import Any

import pytest

from kazoo_amqp.core.route_names import CONSUMER_EVENT, MOD_INIT, candidates, normalise

DEFAULT_KEY = "Event-Category"
DEFAULT_SUBKEY = "Event-Name"
P = "kazoo:consumer-event"

# (id, payload, candidates() keyword arguments, expected five names)
VECTORS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, str, str, str, str]]] = [
    (
        "ER-1-defaults",
        {"Event-Category": "presence", "Event-Name": "update"},
        {},
        (
            f"{P}-presence-update",
            f"{P}-presence",
            f"{P}-event-category-event-name",
            f"{P}-event-category",
            P,
        ),
    ),
    (
        "ER-2-lowercase-and-underscore",
        {"Event-Category": "Directory", "Event-Name": "reg_success"},
        {},
        (
            f"{P}-directory-reg-success",
            f"{P}-directory",
            f"{P}-event-category-event-name",
            f"{P}-event-category",
            P,
        ),
    ),
    (
        "ER-3-upper-snake-case",
        {"Event-Category": "CALL_EVENT", "Event-Name": "CHANNEL_CREATE"},
        {},
        (
            f"{P}-call-event-channel-create",
            f"{P}-call-event",
            f"{P}-event-category-event-name",
            f"{P}-event-category",
            P,
        ),
    ),
    (
        "ER-4-missing-name-keeps-dash",
        {"Event-Category": "presence"},
        {},
        (
            f"{P}-presence-",
            f"{P}-presence",
            f"{P}-event-category-event-name",
            f"{P}-event-category",
            P,
        ),
    ),
    (
        "ER-5-empty-payload",
        {},
        {},
        (f"{P}--", f"{P}-", f"{P}-event-category-event-name", f"{P}-event-category", P),
    ),
    (
        "ER-6-binding-key-and-subkey",
        {"Type": "BLF", "Action": "Flush_All"},
        {"key": "Type", "subkey": "Action", "binding_key": "Type", "binding_subkey": "Action"},
        (f"{P}-blf-flush-all", f"{P}-blf", f"{P}-type-action", f"{P}-type", P),
    ),
    (
        "ER-7-binding-key-name-as-fallback",
        {"Event-Name": "x"},
        {"key": "Type", "binding_key": "Type"},
        (f"{P}-type-x", f"{P}-type", f"{P}-type-event-name", f"{P}-type", P),
    ),
    (
        "ER-8-no-fallback-without-binding-override",
        {"Name": "y"},
        {"key": "Category", "subkey": "Name"},
        (f"{P}--y", f"{P}-", f"{P}-category-name", f"{P}-category", P),
    ),
    (
        "ER-9-number-and-boolean-rendered",
        {"Event-Category": 123, "Event-Name": True},
        {},
        (f"{P}-123-true", f"{P}-123", f"{P}-event-category-event-name", f"{P}-event-category", P),
    ),
    (
        "ER-10-object-rendered-spaced",
        {"Event-Category": {"a": 1}, "Event-Name": "x"},
        {},
        (
            f'{P}-{{ "a": 1 }}-x',
            f'{P}-{{ "a": 1 }}',
            f"{P}-event-category-event-name",
            f"{P}-event-category",
            P,
        ),
    ),
    (
        "ER-11-dots-kept",
        {"Event-Category": "Presence", "Event-Name": "Dialog.Update"},
        {},
        (
            f"{P}-presence-dialog.update",
            f"{P}-presence",
            f"{P}-event-category-event-name",
            f"{P}-event-category",
            P,
        ),
    ),
]


@pytest.mark.parametrize(
    ("payload", "kwargs", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_candidates_match_vector(
    payload: dict[str, Any], kwargs: dict[str, Any], expected: tuple[str, ...]
) -> None:
    """Five names, most to least specific, normalised as in C (§15.6)."""
    args: dict[str, Any] = {"key": DEFAULT_KEY, "subkey": DEFAULT_SUBKEY, **kwargs}
    assert candidates(payload, **args) == expected


def test_candidates_null_and_empty_values_count_as_missing() -> None:
    """JSON null and "" give an empty part, like a missing field."""
    names = candidates(
        {"Event-Category": None, "Event-Name": ""}, key=DEFAULT_KEY, subkey=DEFAULT_SUBKEY
    )
    assert names[:2] == (f"{P}--", f"{P}-")


def test_candidates_empty_subkey_falls_back_to_binding_subkey_name() -> None:
    """An empty subkey value becomes the binding's own event_subkey name."""
    names = candidates(
        {"Event-Category": "a", "Kind": ""}, key=DEFAULT_KEY, subkey="Kind", binding_subkey="Kind"
    )
    assert names[0] == f"{P}-a-kind"


def test_candidates_keep_non_ascii_case() -> None:
    """Only ASCII letters are lowercased (C locale); other characters are kept."""
    names = candidates(
        {"Event-Category": "ÉTÉ_X", "Event-Name": "Ä b:{}"}, key=DEFAULT_KEY, subkey=DEFAULT_SUBKEY
    )
    assert names[0] == f"{P}-ÉtÉ-x-Ä b:{{}}"


def test_candidates_use_json_c_rendering_for_doubles() -> None:
    """A parsed double keeps its lexeme in the route name."""
    from kazoo_amqp.core.jsonc import loads

    names = candidates(loads('{"Event-Category": 1.50}'), key=DEFAULT_KEY, subkey=DEFAULT_SUBKEY)
    assert names[1] == f"{P}-1.50"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ABC_def", "abc-def"),
        ("a.b:c d{}", "a.b:c d{}"),
        ("ÀB_", "Àb-"),
        ("", ""),
    ],
    ids=["ascii", "punctuation-kept", "non-ascii-kept", "empty"],
)
def test_normalise_lowercases_ascii_and_turns_underscore_into_dash(
    text: str, expected: str
) -> None:
    """normalise: A-Z -> a-z, `_` -> `-`, nothing else changes."""
    assert normalise(text) == expected


def test_route_name_constants() -> None:
    """The start-up and catch-all route names."""
    assert MOD_INIT == "kazoo:mod-init"
    assert CONSUMER_EVENT == "kazoo:consumer-event"
