"""Pure parts of observability: histograms, the worker metrics frame, config keys, log identity."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from kazoo_amqp.core import logctx, pipe
from kazoo_amqp.core.config import listen_address, settings_from_mapping
from kazoo_amqp.core.stats import HANDLER_BUCKETS, Histogram, HistogramSet, quantile
from kazoo_amqp.errors import ConfigError
from kazoo_amqp.obs.logs import JsonFormatter


def _table(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


def _one(rows: list[tuple[str, Any]]) -> dict[str, Any]:
    """parametrize keywords for (id, value) rows of a single argument."""
    return {"argvalues": [r[1] for r in rows], "ids": [r[0] for r in rows]}


# -- histograms -------------------------------------------------------------------------------
# (id, observations, expected per-bucket counts for bounds (1, 2, 5))
BUCKETS = [
    ("below-first", [0.5], [1, 0, 0, 0]),
    ("equal-to-a-bound-counts-in-it", [1.0, 2.0, 5.0], [1, 1, 1, 0]),
    ("above-last-is-inf", [5.000001, 100.0], [0, 0, 0, 2]),
    ("zero-and-negative-in-first", [0.0, -1.0], [2, 0, 0, 0]),
    ("mixed", [0.1, 1.5, 1.9, 3, 7], [1, 2, 1, 1]),
]


@pytest.mark.parametrize(("values", "counts"), **_table(BUCKETS))
def test_a_histogram_counts_each_observation_in_its_le_bucket(
    values: list[float], counts: list[int]
) -> None:
    h = Histogram((1.0, 2.0, 5.0))
    for v in values:
        h.observe(v)
    assert h.counts == counts
    assert h.count == len(values)
    assert h.sum == pytest.approx(sum(values))
    cumulative = h.cumulative()
    assert [le for le, _ in cumulative] == ["1.0", "2.0", "5.0", "+Inf"]
    assert cumulative[-1][1] == len(values)


def test_histogram_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((2.0, 1.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 1.0))


# (id, q, counts for bounds (1, 2, 4), expected)
QUANTILES = [
    ("empty-is-none", 0.5, [0, 0, 0, 0], None),
    ("all-in-first-bucket-interpolates-from-zero", 0.5, [10, 0, 0, 0], 0.5),
    ("median-in-second-bucket", 0.5, [0, 10, 0, 0], 1.5),
    ("p90-at-the-top-of-a-bucket", 0.9, [5, 4, 1, 0], 2.0),
    ("p95-across-buckets", 0.95, [5, 4, 1, 0], 3.0),
    ("inf-bucket-reports-highest-bound", 0.99, [0, 0, 0, 5], 4.0),
    ("p0-is-lower-edge", 0.0, [0, 4, 0, 0], 1.0),
]


@pytest.mark.parametrize(("q", "counts", "expected"), **_table(QUANTILES))
def test_quantile_estimates_like_histogram_quantile(
    q: float, counts: list[int], expected: float | None
) -> None:
    got = quantile(q, (1.0, 2.0, 4.0), counts)
    assert got == (None if expected is None else pytest.approx(expected))


def test_a_histogram_set_drains_deltas_that_merge_back_to_the_same_numbers() -> None:
    worker = HistogramSet(HANDLER_BUCKETS)
    manager = HistogramSet(HANDLER_BUCKETS)
    for v in (0.0001, 0.003, 0.2):
        worker.observe(("kazoo:consumer-event-a-b", "ok"), v)
    worker.observe(("kazoo:consumer-event-a-b", "error"), 1.5)
    for labels, counts, total in worker.drain():
        manager.merge((labels[0], labels[1]), counts, total)
    assert not worker  # drained
    worker.observe(("kazoo:consumer-event-a-b", "ok"), 0.2)
    for labels, counts, total in worker.drain():
        manager.merge((labels[0], labels[1]), counts, total)
    ok = manager.by_labels[("kazoo:consumer-event-a-b", "ok")]
    assert ok.count == 4
    assert ok.sum == pytest.approx(0.4031)
    assert manager.by_labels[("kazoo:consumer-event-a-b", "error")].count == 1


def test_merging_counts_of_other_buckets_is_refused() -> None:
    with pytest.raises(ValueError, match="bucket counts"):
        Histogram((1.0,)).add([1, 2, 3], 1.0)


# -- the worker's metrics frame ---------------------------------------------------------------
N = len(HANDLER_BUCKETS) + 1
STATS_ROWS = [
    ("empty", []),
    ("one-route", [("kazoo:consumer-event-presence-update", "ok", [1] * N, 0.25)]),
    (
        "routes-with-odd-characters",
        [
            ('kazoo:consumer-event-é-"q"', "error", [0] * N, 0.0),
            ("kazoo:publish-failed", "ok", [0] * (N - 1) + [7], 12.5),
        ],
    ),
]


@pytest.mark.parametrize("rows", **_one(STATS_ROWS))
def test_a_metrics_frame_round_trips(rows: list[tuple[str, str, list[int], float]]) -> None:
    frame = pipe.encode_stats(rows)
    assert frame[4:5] == b"M"
    assert pipe.decode_stats(frame[4:]).rows == rows


BAD_STATS = [
    ("not-a-metrics-frame", b"O" + b"\0" * 9),
    ("not-json", b"M{"),
    ("not-a-list", b'M{"a": 1}'),
    ("short-row", b'M[["r", "ok", [1]]]'),
    ("negative-count", b'M[["r", "ok", [-1], 0.0]]'),
    ("count-not-int", b'M[["r", "ok", [1.5], 0.0]]'),
    ("route-not-text", b'M[[1, "ok", [1], 0.0]]'),
]


@pytest.mark.parametrize("frame", **_one(BAD_STATS))
def test_a_malformed_metrics_frame_is_a_value_error(frame: bytes) -> None:
    with pytest.raises(ValueError):
        pipe.decode_stats(frame)


def test_outcome_frames_are_unchanged_by_metrics() -> None:
    frame = pipe.encode_outcomes([(1, 0), (2, 1)])
    assert pipe.decode_outcomes(frame[4:]) == [(1, 0), (2, 1)]


# -- config -----------------------------------------------------------------------------------
LISTEN_OK = [
    ("ipv4", "127.0.0.1:9494", ("127.0.0.1", 9494)),
    ("any-port", "127.0.0.1:0", ("127.0.0.1", 0)),
    ("name", "localhost:80", ("localhost", 80)),
    ("all-interfaces", "0.0.0.0:9494", ("0.0.0.0", 9494)),
    ("ipv6", "[::1]:9494", ("::1", 9494)),
]


@pytest.mark.parametrize(("value", "expected"), **_table(LISTEN_OK))
def test_http_listen_accepts_host_port(value: str, expected: tuple[str, int]) -> None:
    assert listen_address(value) == expected
    s = settings_from_mapping(
        {"node_hostname": "n", "http_listen": value}, base_dir="/tmp", default_app_version="1"
    )
    assert s.http_listen == value


LISTEN_BAD = [
    ("no-port", "127.0.0.1"),
    ("port-not-number", "127.0.0.1:http"),
    ("port-too-big", "127.0.0.1:65536"),
    ("no-host", ":9494"),
    ("bare-ipv6", "::1:9494"),
    ("url", "http://127.0.0.1:9494"),
    ("space", "local host:1"),
    ("negative", "127.0.0.1:-1"),
]


@pytest.mark.parametrize("value", **_one(LISTEN_BAD))
def test_a_bad_http_listen_is_a_config_error_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(
            {"node_hostname": "n", "http_listen": value}, base_dir="/tmp", default_app_version="1"
        )
    assert err.value.key == "http_listen"
    assert "http_listen" in str(err.value) and "127.0.0.1:9494" in str(err.value)


def test_metrics_are_off_and_logs_readable_by_default() -> None:
    s = settings_from_mapping({"node_hostname": "n"}, base_dir="/tmp", default_app_version="1")
    assert s.http_listen is None
    assert s.log_format == "text"
    s = settings_from_mapping(
        {"node_hostname": "n", "http_listen": "", "log_format": "JSON"},
        base_dir="/tmp",
        default_app_version="1",
    )
    assert s.http_listen is None
    assert s.log_format == "json"


def test_an_unknown_log_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="log_format"):
        settings_from_mapping(
            {"node_hostname": "n", "log_format": "xml"}, base_dir="/tmp", default_app_version="1"
        )


# -- JSON log lines ---------------------------------------------------------------------------
def _record(msg: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("kazoo_amqp.test", logging.WARNING, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_log_line_has_the_fixed_fields() -> None:
    line = json.loads(JsonFormatter().format(_record("hello world")))
    assert line["level"] == "warning"
    assert line["logger"] == "kazoo_amqp.test"
    assert line["message"] == "hello world"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert not {"exchange", "routing_key", "msg_id", "call_id", "route"} & set(line)


def test_identity_comes_from_the_message_being_handled_without_parsing_text() -> None:
    logctx.set_message(
        exchange="presence",
        routing_key="presence.update.x",
        payload={"Msg-ID": "m-1", "Call-ID": "c-1", "Other": 1},
        route="kazoo:consumer-event-presence-update",
        worker=3,
    )
    try:
        line = json.loads(JsonFormatter().format(_record("text without ids")))
    finally:
        logctx.clear()
    assert line["exchange"] == "presence"
    assert line["routing_key"] == "presence.update.x"
    assert line["msg_id"] == "m-1"
    assert line["call_id"] == "c-1"
    assert line["route"] == "kazoo:consumer-event-presence-update"
    assert line["worker"] == 3
    assert "msg_id" not in json.loads(JsonFormatter().format(_record("after")))


def test_extra_fields_win_over_the_context() -> None:
    logctx.set_message(exchange="a", routing_key="b", payload={}, route=None, worker=None)
    try:
        line = json.loads(JsonFormatter().format(_record("x", exchange="callmgr", msg_id="m-9")))
    finally:
        logctx.clear()
    assert line["exchange"] == "callmgr"
    assert line["msg_id"] == "m-9"
    assert line["routing_key"] == "b"
    assert "route" not in line


def test_a_payload_that_is_not_an_object_gives_no_ids() -> None:
    logctx.set_message(exchange=None, routing_key=None, payload=[1], route="r", worker=None)
    try:
        assert logctx.current() == {"route": "r"}
    finally:
        logctx.clear()
