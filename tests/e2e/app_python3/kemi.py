"""Kamailio app_python3 KEMI script using kazoo_amqp.Client (see test_kamailio_app_python3.py).

Runs inside Kamailio 5.6 (Debian's system Python 3.11, embedded): loaded once in the main
process, then inherited by the forked SIP workers.  The test copies this file into the run
directory and replaces the double-at placeholders (SRC_DIR, SOCKET, CLIENT_TIMEOUT).

SIP API (every reply carries ``X-Worker-Pid`` and, once a Client exists, ``X-Client``:
``<pid that created it>/<Clients created in that process>``):

* ``OPTIONS``: ``200 Alive`` (the test's readiness probe; the Client is not touched).
* ``MESSAGE`` with a JSON body:

  - ``{"op": "publish", "exchange", "routing_key", "payload"}`` -> ``Client.publish``;
    ``200 OK`` with ``X-Result`` (the daemon's result, JSON).
  - ``{"op": "query", "exchange", "routing_key", "payload", "timeout_ms"}`` -> ``Client.query``;
    ``200 OK`` with ``X-Echo`` (the reply's ``Echo`` field), or ``408 Query Timeout`` on
    ``QueryTimeout``.
  - any other ``KazooError``: ``500 <error class name>`` with ``X-Error`` (its message);
    a bug in this script: ``500 Script Error <class>``; a body that is not such JSON: ``400``.
"""

import json
import os
import sys

import KSR  # provided by app_python3

SRC_DIR = "@@SRC_DIR@@"
SOCKET = "@@SOCKET@@"
CLIENT_TIMEOUT = float("@@CLIENT_TIMEOUT@@")

# The package comes from the repository, not from an installed copy; keep its tree clean.
sys.dont_write_bytecode = True
if SRC_DIR not in sys.path:
    sys.path.insert(0, SRC_DIR)

from kazoo_amqp import Client, KazooError, QueryTimeout  # noqa: E402

# One Client per SIP worker process, created on first use (after the fork).  The tag
# "<pid>/<n>" says which process created it and how many Clients that process has created.
_client = None
_client_tag = ""
_clients_created = 0


def client():
    global _client, _client_tag, _clients_created
    if _client is None:
        _client = Client(SOCKET, timeout=CLIENT_TIMEOUT)
        _clients_created += 1
        _client_tag = f"{os.getpid()}/{_clients_created}"
        KSR.info(f"kemi: created kazoo_amqp.Client {_client_tag} for {SOCKET}\n")
    return _client


def _one_line(text, limit=300):
    return " ".join(str(text).split())[:limit]


def _header(name, value):
    KSR.hdr.append_to_reply(f"{name}: {_one_line(value)}\r\n")


def _reply(code, reason):
    if _client_tag:
        _header("X-Client", _client_tag)
    KSR.sl.sl_send_reply(code, _one_line(reason, 100))
    return 1


def _handle(request):
    op = request.get("op")
    if op == "publish":
        result = client().publish(request["exchange"], request["routing_key"], request["payload"])
        _header("X-Result", json.dumps(result, sort_keys=True))
        return _reply(200, "OK")
    if op == "query":
        reply = client().query(
            request["exchange"],
            request["routing_key"],
            request["payload"],
            timeout_ms=request.get("timeout_ms"),
        )
        _header("X-Echo", reply.get("Echo", ""))
        return _reply(200, "OK")
    return _reply(400, "Unknown op")


class kamailio:  # the name app_python3 examples use
    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        _header("X-Worker-Pid", os.getpid())
        if KSR.is_OPTIONS():
            return _reply(200, "Alive")
        if not KSR.is_MESSAGE():
            return _reply(405, "Method Not Allowed")
        body = KSR.pv.get("$rb") or ""
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            _header("X-Error", exc)
            return _reply(400, "Bad JSON")
        try:
            return _handle(request)
        except QueryTimeout as exc:
            _header("X-Error", exc)
            return _reply(408, "Query Timeout")
        except KazooError as exc:
            _header("X-Error", exc)
            return _reply(500, type(exc).__name__)
        except Exception as exc:
            KSR.err(f"kemi: {type(exc).__name__}: {_one_line(exc)}\n")
            _header("X-Error", exc)
            return _reply(500, "Script Error " + type(exc).__name__)


def mod_init():
    return kamailio()
