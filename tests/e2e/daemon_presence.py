"""The kazoo-amqp daemon in front of a real Kamailio presence server, for e2e tests.

``presence_daemon(kam, run_dir)`` starts the real daemon (``tests/integration/daemon_harness``)
with production-like presence routes (the bindings of ``examples/routes.py``):

* ``kazoo:mod-init`` subscribes a unique ``presence`` topic exchange with ``dialog.*.*``,
  ``update.*.*`` and ``mwi_updates.*.*``, ``consistent-worker`` keyed on ``Call-ID`` and the ack
  sent after the handler (``no_ack 0`` + ``wait_for_consumer_ack 1``);
* ``…-presence-dialog-update`` -> ``kz.pua_publish_dialoginfo()``, ``…-presence-update`` ->
  ``kz.pua_publish_presence()``, ``…-presence-mwi-update`` -> ``kz.pua_publish_mwi()``.

Every handler records what ``kz.pua_publish_*`` returned (or the exception) in the daemon's
``events.jsonl`` (``DaemonProcess.events()``), so a test can tell "the row was not written" from
"Kamailio did not send the NOTIFY".

The daemon's ``db_url`` is Kamailio's SQLite file and ``kamailio_rpc`` Kamailio's jsonrpcs
datagram socket. Kamailio's own ``db_url`` needs four slashes (``sqlite:////abs/path``: its
db_sqlite drops one); ours takes ``sqlite://`` + the absolute path (three slashes) and also
normalises the four-slash form to the same file.

Kazoo-style payloads are the corpus cases (``shared/corpus/0[1-8]*.json``) re-targeted at the
watcher's user and realm by :func:`corpus_payload`.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from kamailio.harness import LOCALHOST, KamailioPresence, Watcher, free_media_port, free_udp_ports

from tests.conftest import find_shared_dir
from tests.integration.daemon_harness import (  # noqa: F401 - route names re-exported
    DIALOG_ROUTE,
    MWI_ROUTE,
    PRESENCE_ROUTE,
    DaemonProcess,
    pika_connection,
    presence_routes,
    unique,
)


class PresenceDaemon:
    """A started ``DaemonProcess`` plus the exchange/queue its presence routes consume."""

    def __init__(self, daemon: DaemonProcess, exchange: str, queue: str) -> None:
        self.daemon = daemon
        self.exchange = exchange
        self.queue = queue

    # -- publishing like Kazoo -------------------------------------------------------------
    def publish(self, routing_key: str, payload: dict[str, Any]) -> None:
        """Publish one JSON message to the presence exchange (with publisher confirms)."""
        conn = pika_connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish(
                self.exchange,
                routing_key,
                json.dumps(payload).encode(),
                pika.BasicProperties(content_type="application/json"),
                mandatory=True,
            )
        finally:
            conn.close()

    def publish_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish several messages back to back on one channel, in order."""
        conn = pika_connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for routing_key, payload in messages:
                ch.basic_publish(
                    self.exchange,
                    routing_key,
                    json.dumps(payload).encode(),
                    pika.BasicProperties(content_type="application/json"),
                    mandatory=True,
                )
        finally:
            conn.close()

    # -- what the routes did ---------------------------------------------------------------
    def results(self, route: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events() if route is None or e["route"] == route]

    def wait_results(
        self, count: int, route: str | None = None, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        return self.daemon.wait_events(count, timeout=timeout, route=route)

    def diagnostics(self) -> str:
        return (
            f"--- route results:\n{json.dumps(self.results(), indent=1)[-3000:]}\n"
            f"--- daemon log tail:\n{self.daemon.logs()[-3000:]}"
        )


def wait_consumer(queue: str, timeout: float = 15.0) -> None:
    """Wait until ``queue`` exists and has a consumer (the daemon's subscription is live)."""
    deadline = time.monotonic() + timeout
    conn = pika_connection()
    try:
        while True:
            ch = conn.channel()
            try:
                ok = ch.queue_declare(queue, passive=True).method
                if ok.consumer_count >= 1:
                    return
                ch.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass  # 404: not declared yet (the channel is closed by the broker)
            if time.monotonic() > deadline:
                raise AssertionError(f"queue {queue} has no consumer after {timeout}s")
            time.sleep(0.1)
    finally:
        conn.close()


def presence_daemon(
    kam: KamailioPresence, run_dir: Path, *, workers: int = 2, config: dict[str, Any] | None = None
) -> PresenceDaemon:
    """Start the daemon writing Kamailio's presentity DB and refreshing its watchers.

    The caller stops it with ``.daemon.stop()`` (or ``with ...daemon:`` after start).
    """
    assert kam.db_path is not None, "only the SQLite harness shares its DB file"
    run_dir.mkdir(parents=True, exist_ok=True)
    exchange, queue = unique("kzt.presence"), unique("kzt.presence-dialog")
    cfg = {
        "db_url": f"sqlite://{kam.db_path}",  # sqlite:///abs/path (three slashes)
        "kamailio_rpc": kam.rpc_url,
        "log_level": "info",
        **(config or {}),
    }
    daemon = DaemonProcess(run_dir, presence_routes(exchange, queue), config=cfg, workers=workers)
    daemon.start()
    try:
        wait_consumer(queue)
    except BaseException:
        daemon.stop()
        raise
    return PresenceDaemon(daemon, exchange, queue)


# ------------------------------------------------------------------------ Kazoo payloads


def corpus_case(name_prefix: str) -> dict[str, Any]:
    """The corpus case whose file name starts with ``name_prefix`` (e.g. ``"02-"``)."""
    shared = find_shared_dir()
    if shared is None:
        import pytest

        pytest.skip("../shared not found: set KAZOO_SHARED_DIR (needed for the corpus payloads)")
    matches = sorted((shared / "corpus").glob(f"{name_prefix}*.json"))
    assert len(matches) == 1, f"corpus case {name_prefix}*: found {matches}"
    case: dict[str, Any] = json.loads(matches[0].read_text())
    return case


def corpus_payload(
    name_prefix: str, *, user: str, realm: str, call_id: str | None = None, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """A corpus payload re-targeted at ``user@realm``: ``(routing_key, payload)``.

    The presentity of the case (``From-User`` / ``From-Realm``) becomes ``user`` / ``realm``
    everywhere it appears (From, Presence-ID, To-URI, Message-Account, ...); other parties keep
    their user and move to ``realm``. ``Call-ID`` is ``call_id`` (default: a fresh one) and
    ``Msg-ID`` is fresh. ``overrides`` replace members last (``None`` deletes one).
    """
    case = corpus_case(name_prefix)
    p = copy.deepcopy(case["payload"])
    old_user, old_realm = p["From-User"], p["From-Realm"]
    old_call = p.get("Call-ID", "")
    call_id = call_id or uuid.uuid4().hex

    def fix(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value == old_user:
            return user
        if old_call and value == old_call:
            return call_id
        value = value.replace(f"{old_user}@{old_realm}", f"{user}@{realm}")
        return value.replace(old_realm, realm)

    p = {k: fix(v) for k, v in p.items()}
    p["Call-ID"] = call_id
    p["Msg-ID"] = uuid.uuid4().hex[:16]
    for key, value in overrides.items():
        key = key.replace("_", "-")
        if value is None:
            p.pop(key, None)
        else:
            p[key] = value
    # Kazoo's routing keys: <kind>.<encoded realm>.<call-id or user> (kapi_presence)
    kind = case["routing_key"].split(".", 1)[0]
    last = user if kind == "mwi_updates" else call_id
    routing_key = f"{kind}.{realm.replace('.', '%2E')}.{last}"
    return routing_key, p


# ------------------------------------------------------------------------ a watcher for bursts

_LOOP_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- SUBSCRIBE once, then answer every NOTIFY with 200 until killed (no un-SUBSCRIBE). -->
<scenario name="kazoo-amqp e2e SUBSCRIBE loop">
  <send retrans="500">
    <![CDATA[

      SUBSCRIBE sip:[service]@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:watcher-[pid]@[domain]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[service]@[domain]>
      Call-ID: [call_id]
      CSeq: 1 SUBSCRIBE
      Contact: <sip:watcher-[pid]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Event: @@EVENT@@
      Accept: @@ACCEPT@@
      Expires: 300
      User-Agent: kazoo-amqp-e2e-sipp
      Content-Length: 0

    ]]>
  </send>
  <recv response="202" optional="true" next="subscribed"/>
  <recv response="200"/>
  <label id="subscribed"/>
  <label id="wait"/>
  <recv request="NOTIFY"/>
  <send next="wait">
    <action>
      <log message="=== SIPP NOTIFY BEGIN ==="/>
      <log message="[last_message]"/>
      <log message="=== SIPP NOTIFY END ==="/>
    </action>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:watcher-[pid]@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

_ACCEPT = {
    "dialog": "application/dialog-info+xml",
    "message-summary": "application/simple-message-summary",
    "presence": "application/pidf+xml",
}


class BurstWatcher(Watcher):
    """A SIPp watcher that keeps answering NOTIFYs, however close together, until stopped.

    The harness' :class:`Watcher` runs SIPp with ``-default_behaviors abortunexp`` and has
    ``<nop>`` steps between receiving a NOTIFY and answering it: a second NOTIFY arriving in
    that window (Kamailio sends one per refresh, microseconds apart when the daemon refreshes
    back to back) aborts the call. This one answers straight from the ``<recv>`` and runs
    without ``abortunexp``: a NOTIFY that still lands in the gap is ignored and Kamailio's
    transaction layer retransmits it 500 ms later, so none is lost. It never un-SUBSCRIBEs;
    stop it with :meth:`stop` (the harness also stops it with Kamailio). Use
    ``wait_subscribed``, ``notifies`` and ``wait_notify_bodies(count=...)`` as usual.
    """

    def _render_scenario(self) -> None:
        text = _LOOP_SCENARIO.replace("@@EVENT@@", self.event)
        self.scenario_path.write_text(text.replace("@@ACCEPT@@", _ACCEPT[self.event]))

    def start(self) -> BurstWatcher:
        from kamailio.harness import HarnessError, sipp_binary

        if self.proc is not None:
            raise HarnessError("watcher already started")
        if self.harness.proc is None:
            raise HarnessError("Kamailio is not running")
        sipp = sipp_binary()
        if sipp is None:
            raise HarnessError("sipp not installed")
        self.dir.mkdir(parents=True, exist_ok=False)
        self._render_scenario()
        self.port, ctrl = free_udp_ports(2)
        media = free_media_port()
        args = [
            sipp, f"{LOCALHOST}:{self.harness.sip_port}",
            "-sf", str(self.scenario_path),
            "-s", self.user, "-key", "domain", self.domain,
            "-i", LOCALHOST, "-p", str(self.port),
            "-mi", LOCALHOST, "-mp", str(media), "-cp", str(ctrl),
            "-m", "1", "-l", "1",
            "-timeout", f"{int(self.total_timeout)}s", "-timeout_error",
            "-nostdin", "-default_behaviors", "pingreply",
            "-trace_logs", "-log_file", str(self.log_path),
            "-trace_msg", "-message_file", str(self.msg_path),
            "-trace_err", "-error_file", str(self.err_path),
        ]  # fmt: skip
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )  # fmt: skip
        self._deadline = time.monotonic() + self.total_timeout + 5
        self.harness._watchers.append(self)
        return self
