"""Event-route names for consumed messages, most to least specific (spec §4.3, §15.6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kazoo_amqp.core.jsonc import render

__all__ = ["CONSUMER_EVENT", "MOD_INIT", "PUBLISH_FAILED", "candidates", "normalise"]

#: Run once at start-up to collect subscriptions (and the KEMI callback's start-up name).
MOD_INIT: Final = "kazoo:mod-init"
#: The last-resort route, and the name the KEMI callback always receives for deliveries.
CONSUMER_EVENT: Final = "kazoo:consumer-event"
#: Run (when defined) for a publish accepted without a confirm request that finally failed.
PUBLISH_FAILED: Final = "kazoo:publish-failed"

_PREFIX: Final = CONSUMER_EVENT + "-"
# C-locale tolower() (ASCII letters only), then `_` -> `-`.
_NORMALISE: Final = {**{c: c + 32 for c in range(ord("A"), ord("Z") + 1)}, ord("_"): ord("-")}


def normalise(text: str) -> str:
    """Lowercase ASCII letters only and turn `_` into `-`; every other character is kept."""
    if text.isascii():
        return text.lower().replace("_", "-")
    return text.translate(_NORMALISE)


def _field(payload: Mapping[str, Any], name: str) -> str:
    """get_string of a top-level field; missing or null give ""."""
    value = payload.get(name)
    if value is None:
        return ""
    return render(value)


def candidates(
    payload: Mapping[str, Any],
    *,
    key: str,
    subkey: str,
    binding_key: str | None = None,
    binding_subkey: str | None = None,
) -> tuple[str, str, str, str, str]:
    """The five route names to try in order; an empty value falls back to the binding's key name."""
    cat = _field(payload, key) or binding_key or ""
    name = _field(payload, subkey) or binding_subkey or ""
    cat_n = normalise(cat)
    key_n = normalise(key)
    return (
        _PREFIX + cat_n + "-" + normalise(name),
        _PREFIX + cat_n,
        _PREFIX + key_n + "-" + normalise(subkey),
        _PREFIX + key_n,
        CONSUMER_EVENT,
    )
