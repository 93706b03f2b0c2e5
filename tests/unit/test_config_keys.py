"""The key table (core/config_keys.py) is the one source: parsing, notes, --describe, example."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp import cli
from kazoo_amqp.core.config import KNOWN_KEYS, Settings, settings_from_mapping
from kazoo_amqp.core.config_keys import EFFECTIVE, KEY, KEYS, describe_table, render_example
from kazoo_amqp.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kazoo-amqp.toml"
#: table rows whose Settings field has another name, and fields that are not keys
FIELD = {"amqp_consumer_processes": "workers", "amqp_connection": "brokers"}
NOT_KEYS = {"brokers", "workers", "notes"}


def _settings(**data: Any) -> Settings:
    return settings_from_mapping(
        {"node_hostname": "n.example.net", **data}, base_dir="/etc/kz", default_app_version="9"
    )


def test_example_file_is_the_generated_one() -> None:
    """Fails when examples/kazoo-amqp.toml and the table disagree (scripts/gen-config-example)."""
    assert EXAMPLE.read_text() == render_example(), "run scripts/gen-config-example"


def test_every_settings_field_has_a_row_and_the_same_default() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    rows = {FIELD.get(k.name, k.name): k for k in KEYS}
    assert set(fields) - set(rows) - NOT_KEYS <= {"amqp_timer_process_interval"} | set(rows)
    for name, field in fields.items():
        if name in NOT_KEYS or field.default is dataclasses.MISSING:
            continue
        k = rows[name]
        expected = k.default
        if k.kind == "seconds":
            expected = float(expected)
        if name in EFFECTIVE:
            expected = EFFECTIVE[name](expected)
        if name == "socket_mode":  # shown as the octal text an operator writes
            expected = int(expected, 8)
        assert field.default == expected, (name, field.default, expected)
    for name in ("node_hostname", "socket", "db_url", "app_version"):
        assert name in rows


def test_known_keys_are_the_tables_spellings() -> None:
    spelled = {s for k in KEYS for s in k.spellings}
    assert spelled == KNOWN_KEYS
    assert {"amqp_consumer_workers", "amqp_timmer_process_interval", "amqp_query_timeout_sec",
            "amqp_query_timeout_micro", "kamailio"} <= KNOWN_KEYS  # fmt: skip


@pytest.mark.parametrize("k", [k for k in KEYS if k.kind == "int"], ids=lambda k: k.name)
def test_integer_ranges_come_from_the_table(k: Any) -> None:
    assert k.minimum is not None
    extra = {"reconnect_min_ms": 1} if k.name == "reconnect_max_ms" else {}
    getattr(_settings(**{k.name: k.minimum}, **extra), FIELD.get(k.name, k.name))
    with pytest.raises(ConfigError) as below:
        _settings(**{k.name: k.minimum - 1})
    assert below.value.key == k.name
    if k.maximum is not None:
        with pytest.raises(ConfigError, match=f"from {k.minimum} to {k.maximum}"):
            _settings(**{k.name: k.maximum + 1})


@pytest.mark.parametrize("k", [k for k in KEYS if k.choices], ids=lambda k: k.name)
def test_choices_come_from_the_table(k: Any) -> None:
    for choice in k.choices:
        assert getattr(_settings(**{k.name: choice}), k.name) == choice
    with pytest.raises(ConfigError, match=k.choices[0]):
        _settings(**{k.name: "nope"})


@pytest.mark.parametrize("k", [k for k in KEYS if k.ignored], ids=lambda k: k.name)
def test_ignored_keys_give_the_tables_note(k: Any) -> None:
    value = k.default if k.default is not None else "$avp(x)"
    key = f"{k.name}_sec" if k.kind == "seconds" else k.name
    if k.kind == "seconds":
        value = 0
    notes = _settings(**{key: value}).notes
    assert any(n.startswith(f"{key} is accepted and ignored: {k.ignored}") for n in notes), notes


def test_heartbeats_and_connect_timeout_mean_what_the_table_says() -> None:
    """The drift issue 9 names: the example's 0 / 0.2 s are not used as given."""
    default = _settings()
    assert (default.amqp_heartbeats, default.amqp_connect_timeout) == (30, 1.0)
    off = _settings(amqp_heartbeats=0, amqp_connect_timeout=0.2)
    assert (off.amqp_heartbeats, off.amqp_connect_timeout) == (30, 1.0)
    assert any("means 30 s" in n for n in off.notes)
    assert any("at least 1 s" in n for n in off.notes)
    given = _settings(amqp_heartbeats=5, amqp_connect_timeout=3)
    assert (given.amqp_heartbeats, given.amqp_connect_timeout, given.notes[1:]) == (5, 3.0, ())
    assert "means 30 s" in KEY["amqp_heartbeats"].effective


def test_check_config_describe_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--describe"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["name", "type", "default", "range", "meaning", "ignored-why"]
    assert [line.split("\t")[0] for line in lines[1:]] == [k.name for k in KEYS]
    assert all(len(line.split("\t")) == 6 for line in lines)
    rows = {r[0]: r for r in describe_table()}
    assert rows["amqp_heartbeats"][2:4] == ("0", "0..65535")
    assert "30 s" in rows["amqp_heartbeats"][4]
    assert rows["amqp_result_avp"][5].startswith("there are no pseudo-variables")


def test_check_config_example_prints_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--example"]) == cli.EXIT_OK
    assert capsys.readouterr().out == EXAMPLE.read_text()
